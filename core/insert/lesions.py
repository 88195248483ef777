"""Hemorrhages painted into a real slice: one shape per subtype, placed by the slice's own anatomy, at its subtype's
acute-blood density with partial-volume edges and the slice's own noise. Higher difficulty = smaller and fainter.
What each subtype looks like and where its numbers come from: docs/NOTES.md, "Painted bleeds: what each subtype
looks like"."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from core.insert.anatomy import SURFACE_MM, Anatomy, disk
from core.subtypes import EPIDURAL, INTRAPARENCHYMAL, INTRAVENTRICULAR, SUBARACHNOID, SUBDURAL

PAINTER_VERSION = 4         # part of the painted-set cache key: bump it when what is painted or written changes
# each subtype's acute-blood density, HU (docs/NOTES.md, "Painted bleeds: what each subtype looks like")
DENSITY_HU = {INTRAPARENCHYMAL: (60.0, 90.0), SUBDURAL: (50.0, 80.0), EPIDURAL: (50.0, 80.0),
              SUBARACHNOID: (45.0, 70.0), INTRAVENTRICULAR: (50.0, 80.0)}
BLOOD_HU = (min(lo for lo, _ in DENSITY_HU.values()), max(hi for _, hi in DENSITY_HU.values()))   # any subtype
EXTRA_AXIAL = (SUBDURAL, EPIDURAL)   # blood against the inner table: its partial volume with bone is painted too
EDEMA_DROP_HU = (4.0, 10.0)  # the hypodense rim some intraparenchymal bleeds get, and its width
EDEMA_MM = (1.0, 4.0)
MIN_AREA_MM2 = 8.0           # a painted bleed smaller than this is not drawn (the subtype does not fit)
TABLE_BINS = 180             # the inner table in 2 degree steps
FALX_TILT_DEG = 25           # how far from the image's vertical a head may turn in the scanner
CONVEX_MM = 2.0              # the table within this of the intracranial space's convex hull is convexity
LATERAL_SIN = 0.7            # epidural sites > 45 degrees from both poles are temporoparietal,
TEMPOROPARIETAL_WEIGHT = 3.0  # weighted so that about three in four epidurals lie there
FALX_GAP_MM = 4.0            # a subdural crescent stops this short of the falx at both poles
FALX_P = 0.25                # share of subdurals running on along the falx
DIFFUSE_SAH_P = 0.5          # share of subarachnoid bleeds in the fissures and cisterns, not the convexity's sulci
DEEP_CSF_MM = 12.0           # a sulcal region reaching deeper than this from the surface is a fissure
CONVEXITY_SAH_MM = 20.0      # convexity subarachnoid blood stays within this of the inner table
LATERAL_VENTRICLE = (200.0, 3.5)   # mm2, inscribed radius mm: a lateral ventricle's body or atrium, not a horn tip
MIN_HORN_MM2 = 40.0          # smaller ventricle regions are left dry
DEPENDENT_MM = 6.0           # a ventricle region's dependent end, which must lie this far off the midline
HORN_OFF_MIDLINE_MM = 9.0
DEEP_ICH_P, DEEP_ICH_MM = 0.6, 20.0   # share of intraparenchymal bleeds within this of a ventricle (deep nuclei)


@dataclass
class Painted:
    values: np.ndarray   # the slice with the bleed, in the input's own values (HU or uint8 grey)
    mask: np.ndarray     # bool: the painted blood at full density (a partial-volume halo reaches ~2 px beyond)
    subtype: str
    area_mm2: float
    blood_hu: float


@dataclass
class Table:
    """The inner table seen from the intracranial centre, in TABLE_BINS angle bins: bin 0 at the frontal pole, the
    middle bin at the occipital pole, each hemisphere's convexity one half."""
    bins: np.ndarray     # per pixel: the bin of its nearest inner-table point
    arc_mm: np.ndarray   # per bin: arc length along the table from the frontal pole
    perimeter_mm: float
    bony: np.ndarray     # per bin: the table there is bone (not the open skull base)
    convex: np.ndarray   # per bin: bone on the convexity, not a fossa's edge or the petrous ridge
    axis: float          # the falx line's angle (image axes), pointing posterior


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _size(rng, lo: float, hi: float, difficulty: float) -> float:
    return float(rng.uniform(lo, hi)) * (1 - 0.6 * difficulty)


def falx_axis(a: Anatomy) -> float:
    """The falx line's angle, pointing posterior: of the lines through the intracranial centre within FALX_TILT_DEG of
    the image's vertical (anterior up), the one along which the brain shows most fine detail (falx or fissure)."""
    detail = np.where(a.inside, np.abs(a.hu - ndimage.gaussian_filter(a.hu, 3)), 0)
    cy, cx = a.centre
    angles = np.pi / 2 + np.radians(np.arange(-FALX_TILT_DEG, FALX_TILT_DEG + 1))[:, None]
    t = np.arange(-max(a.hu.shape), max(a.hu.shape))
    rows = np.clip(np.rint(cy + t * np.sin(angles)).astype(int), 0, a.hu.shape[0] - 1)
    cols = np.clip(np.rint(cx + t * np.cos(angles)).astype(int), 0, a.hu.shape[1] - 1)
    inside = a.inside[rows, cols]
    score = (detail[rows, cols] * inside).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)
    return float(angles[int(np.argmax(score)), 0])


def _across_falx(a: Anatomy, axis: float) -> np.ndarray:
    """Every pixel's signed distance (mm) from the falx line: negative on one hemisphere's side, positive on the other's
    (the sides of the table's first and second halves)."""
    cy, cx = a.centre
    rows, cols = np.indices(a.hu.shape)
    return ((rows - cy) * np.cos(axis) - (cols - cx) * np.sin(axis)) * a.spacing_mm


def _bin_of(a: Anatomy, axis: float, rows, cols) -> np.ndarray:
    cy, cx = a.centre
    turn = (np.arctan2(rows - cy, cols - cx) - axis - np.pi) % (2 * np.pi)   # 0 at the frontal pole
    return (turn / (2 * np.pi) * TABLE_BINS).astype(int) % TABLE_BINS


def _reach(a: Anatomy, axis: float, edge: np.ndarray) -> np.ndarray:
    """Per bin, the distance (px) of `edge`'s farthest pixel from the intracranial centre; empty bins interpolated."""
    rows, cols = np.nonzero(edge)
    cy, cx = a.centre
    reach = np.zeros(TABLE_BINS)
    np.maximum.at(reach, _bin_of(a, axis, rows, cols), np.hypot(rows - cy, cols - cx))
    seen = np.flatnonzero(reach > 0)
    return np.interp(np.arange(TABLE_BINS), seen, reach[seen], period=TABLE_BINS)


def inner_table(a: Anatomy) -> Table:
    """The slice's inner table (Table): where it runs, how long it is, where it is bone and convexity."""
    axis = falx_axis(a)
    space = ndimage.binary_fill_holes(a.inside)   # a calcified choroid plexus or pineal is no inner table
    _, (near_rows, near_cols) = ndimage.distance_transform_edt(space, return_indices=True)
    edge = space & ~ndimage.binary_erosion(space)
    hull = convex_hull_image(space)
    reach = _reach(a, axis, edge)
    on_hull = reach >= _reach(a, axis, hull & ~ndimage.binary_erosion(hull)) - CONVEX_MM / a.spacing_mm
    rows, cols = np.nonzero(edge)
    edge_bins = _bin_of(a, axis, rows, cols)
    on_bone = ndimage.binary_dilation(a.bone, disk(3))[rows, cols]
    bony = np.bincount(edge_bins, on_bone, TABLE_BINS) >= 0.7 * np.bincount(edge_bins, minlength=TABLE_BINS)
    step = reach * a.spacing_mm * 2 * np.pi / TABLE_BINS
    return Table(_bin_of(a, axis, near_rows, near_cols), np.cumsum(step) - step / 2, float(step.sum()), bony,
                 bony & on_hull, axis)


def _along_table(a: Anatomy, table: Table, centre_mm: float, half_mm: float, thick_mm: float, profile,
                 allowed: np.ndarray) -> np.ndarray:
    """Blood between brain and inner table: over the arc centre_mm +- half_mm of the table (where `allowed`), as
    deep as thick_mm * profile(|t|), t the arc position scaled to -1..1."""
    offset = (table.arc_mm[table.bins] - centre_mm + table.perimeter_mm / 2) % table.perimeter_mm
    t = np.abs(offset - table.perimeter_mm / 2) / half_mm
    limit = thick_mm * profile(np.clip(t, 0, 1))
    tip = min(2 * a.spacing_mm, thick_mm / 2)   # thinner tips would break into specks along the table
    return a.inside & allowed[table.bins] & (t < 1) & (a.depth_mm < limit) & (limit >= tip)


def epidural(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """A biconvex lens against the convexity's inner table, most often temporoparietal: short along the table (the
    dura it strips stays bound at the sutures), thickest in its middle, sharply marginated."""
    table = inner_table(a)
    sites = np.flatnonzero(table.convex)
    if not sites.size:
        return None
    lateral = np.abs(np.sin(sites * 2 * np.pi / TABLE_BINS)) > LATERAL_SIN
    weights = np.where(lateral, TEMPOROPARIETAL_WEIGHT, 1.0)
    centre = table.arc_mm[rng.choice(sites, p=weights / weights.sum())]
    half = max(_size(rng, 15, 35, difficulty), 6.0)
    thick = min(max(_size(rng, 8, 25, difficulty), 3.0), 0.8 * half)
    bluntness = rng.uniform(0.5, 1.0)   # 0.5: an elliptic lens, 1: a parabolic one with pointed tips
    return _along_table(a, table, centre, half, thick, lambda t: (1 - t ** 2) ** bluntness, table.convex)


def subdural(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """A crescent along one hemisphere's inner table: long (it crosses sutures), stopped short of the falx at both
    poles, thin and even with tapering tips; sometimes running on along the falx."""
    table = inner_table(a)
    side = int(rng.integers(2))
    half_bins = TABLE_BINS // 2
    allowed = np.zeros(TABLE_BINS, bool)
    allowed[side * half_bins:(side + 1) * half_bins] = table.bony[side * half_bins:(side + 1) * half_bins]
    if allowed.sum() < TABLE_BINS // 8:
        return None
    start = table.arc_mm[side * half_bins] + FALX_GAP_MM
    end = table.arc_mm[(side + 1) * half_bins - 1] - FALX_GAP_MM
    length = (end - start) * rng.uniform(0.4, 0.9) * (1 - 0.4 * difficulty)
    centre = rng.uniform(start + length / 2, end - length / 2)
    thick = max(_size(rng, 4, 16, difficulty), 2.0)
    taper = rng.uniform(3, 6)   # higher: flatter middle, shorter tips
    region = _along_table(a, table, centre, length / 2, thick, lambda t: 1 - t ** taper, allowed)
    if rng.uniform() < FALX_P:
        region |= _along_falx(a, table.axis, side, thick, rng)
    return region


def _along_falx(a: Anatomy, axis: float, side: int, thick: float, rng) -> np.ndarray:
    """A thin strip on one side of the falx, from the frontal or the occipital pole inward (parafalcine blood)."""
    cy, cx = a.centre
    rows, cols = np.indices(a.hu.shape)
    across = _across_falx(a, axis) * (2 * side - 1)
    along = ((cols - cx) * np.cos(axis) + (rows - cy) * np.sin(axis)) * a.spacing_mm
    along = along if rng.uniform() < 0.5 else -along   # from the frontal pole or the occipital one
    on_falx = a.inside & (np.abs(across) < 2)
    if not on_falx.any():
        return np.zeros_like(a.inside)
    width, length = float(np.clip(thick / 2, 1.5, 4.0)), rng.uniform(15, 40)
    strip = (across > 0) & (across < width) & (along < along[on_falx].min() + length)
    return strip & a.inside & ~a.ventricles


def subarachnoid(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """Blood filling the subarachnoid CSF of a sector: the convexity's sulci (a narrow sector), or the fissures that
    run from the surface deep into the brain with the cisterns they open into (a wide sector, the aneurysmal
    pattern); thin lines and cisterns, never blobs beside them."""
    labels, n = ndimage.label(a.sulci)
    index = np.arange(1, n + 1)
    fissure = ((ndimage.minimum(a.depth_mm, labels, index) < SURFACE_MM)
               & (ndimage.maximum(a.depth_mm, labels, index) > DEEP_CSF_MM))
    fissures = np.concatenate([[False], fissure])[labels]
    diffuse = rng.uniform() < DIFFUSE_SAH_P and fissures.sum() * a.spacing_mm ** 2 >= MIN_AREA_MM2
    space = fissures if diffuse else a.sulci & (a.depth_mm < CONVEXITY_SAH_MM)
    half = max(rng.uniform(*((np.pi / 2, np.pi) if diffuse else (0.3, 0.9))) * (1 - 0.5 * difficulty), 0.2)
    sector = np.abs(_wrap(a.angles() - rng.uniform(-np.pi, np.pi))) < half
    filled = ndimage.binary_dilation(space & sector, disk(1)) & a.inside & ~a.ventricles
    return filled if filled.any() else None


def _lateral_ventricles(a: Anatomy) -> np.ndarray | None:
    """The parts of the lateral ventricles the slice shows: ventricle regions whose dependent end (their lowest
    DEPENDENT_MM) lies off the midline, unlike the midline cisterns behind and the third and fourth ventricles;
    None unless one of them is as large as a lateral ventricle's body or atrium."""
    labels, n = ndimage.label(a.ventricles)
    index = np.arange(1, n + 1)
    rows = np.indices(a.hu.shape)[0]
    bottom = np.concatenate([[0], ndimage.maximum(rows, labels, index)])[labels]
    dependent = np.where(a.ventricles & (rows > bottom - DEPENDENT_MM / a.spacing_mm), labels, 0)
    off_midline = np.abs(_across_falx(a, falx_axis(a)))
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:] * a.spacing_mm ** 2
    radius = ndimage.maximum(ndimage.distance_transform_edt(a.ventricles), labels, index) * a.spacing_mm
    horn = (area >= MIN_HORN_MM2) & (ndimage.mean(off_midline, dependent, index) >= HORN_OFF_MIDLINE_MM)
    body = horn & (area >= LATERAL_VENTRICLE[0]) & (radius >= LATERAL_VENTRICLE[1])
    return np.isin(labels, index[horn]) if body.any() else None


def intraventricular(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """Blood layered in the lateral ventricles' dependent part (the occipital horns of a supine patient: the image's
    lower rows) below one horizontal blood-fluid level."""
    lateral = _lateral_ventricles(a) if a.ventricles.any() else None
    if lateral is None:
        return None
    rows = np.indices(a.hu.shape)[0]
    top, bottom = rows[lateral].min(), rows[lateral].max()
    layer = max(_size(rng, 3, 12, difficulty), 2.0) / a.spacing_mm
    return lateral & (rows > bottom - min(layer, 0.5 * (bottom - top + 1)))


def intraparenchymal(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """A round to oval, sometimes lobulated clot in the parenchyma of one hemisphere, clear of the ventricles and the
    inner table (shrunk to fit where it would reach them); more often deep (basal ganglia, thalamus: beside a
    ventricle) than lobar."""
    from_ventricles = (ndimage.distance_transform_edt(~a.ventricles) * a.spacing_mm if a.ventricles.any()
                       else np.full(a.hu.shape, np.inf))
    across = _across_falx(a, falx_axis(a))
    clearance = np.minimum(np.minimum(a.depth_mm, from_ventricles) - 3, np.abs(across) - 2)
    room = a.parenchyma & (clearance >= 3)
    deep = room & (from_ventricles < DEEP_ICH_MM)
    room = deep if deep.any() and rng.uniform() < DEEP_ICH_P else room
    radius = max(_size(rng, 5, 20, difficulty), 3.0)
    room = room & (clearance >= radius) if (room & (clearance >= radius)).any() else room
    if not room.any():
        return None
    rows, cols = np.nonzero(room)
    pick = int(rng.integers(len(rows)))
    lobes = rng.uniform(0, 0.12, 3)
    radius = min(radius, clearance[rows[pick], cols[pick]] / (1 + lobes.sum()))
    dy, dx = (np.indices(a.hu.shape) - np.array([rows[pick], cols[pick]])[:, None, None]) * a.spacing_mm
    tilt, elong = rng.uniform(0, np.pi), rng.uniform(0.6, 1)
    u, v = dx * np.cos(tilt) + dy * np.sin(tilt), (dy * np.cos(tilt) - dx * np.sin(tilt)) / elong
    theta = np.arctan2(v, u)
    outline = 1 + sum(amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k, amp in zip((2, 3, 4), lobes))
    one_side = across * across[rows[pick], cols[pick]] > 0   # it does not cross the falx
    return (np.hypot(u, v) < radius * outline) & a.inside & (from_ventricles > 3) & one_side


SHAPES = {INTRAPARENCHYMAL: intraparenchymal, SUBDURAL: subdural, EPIDURAL: epidural, SUBARACHNOID: subarachnoid,
          INTRAVENTRICULAR: intraventricular}


def _field(rng, shape, smooth_px: float, std: float) -> np.ndarray:
    """Smoothed Gaussian noise of a given std: 0.7 px is reconstructed CT noise, 4 px a clot's heterogeneity."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), smooth_px)
    return field / max(float(field.std()), 1e-6) * std


def _edema(a: Anatomy, region: np.ndarray, rng) -> np.ndarray:
    """How much darker (HU) each pixel gets in a hypodense rim around `region`, within the parenchyma."""
    rim = ndimage.binary_dilation(region, disk(max(1, round(rng.uniform(*EDEMA_MM) / a.spacing_mm)))) & a.parenchyma
    return rng.uniform(*EDEMA_DROP_HU) * np.clip(ndimage.gaussian_filter(rim.astype(np.float32), 0.6), 0, 1)


def _table_rim(a: Anatomy, region: np.ndarray) -> np.ndarray:
    """The pixels between the intracranial space and bone (bone's partial volume) next to an extra-axial `region`."""
    rim = ndimage.binary_dilation(a.inside, disk(2)) & ~a.inside & ~a.bone & a.head
    return rim & ndimage.binary_dilation(region, disk(2))


def paint(a: Anatomy, values: np.ndarray, region: np.ndarray, subtype: str, rng, difficulty: float) -> Painted:
    """Blend blood into `region` at full density, with a partial-volume halo around it (and, against the inner table,
    into the pixels between the intracranial space and bone), a clot's slow heterogeneity and the slice's noise; an
    intraparenchymal bleed may get a hypodense rim. Pixels beyond the halo keep their bytes."""
    lo, hi = DENSITY_HU[subtype]
    blood = float(rng.uniform(lo + 0.3 * (hi - lo) * (1 - difficulty), hi - 0.6 * (hi - lo) * difficulty))
    region = region & a.inside
    rim = _table_rim(a, region) if subtype in EXTRA_AXIAL else np.zeros_like(region)
    halo = np.clip(ndimage.gaussian_filter(region.astype(np.float32), 0.6), 0, 1)
    alpha = np.maximum(region, halo) * a.inside + 0.5 * rim
    clot = np.clip(blood + _field(rng, a.hu.shape, 4.0, 3.0), lo, hi)
    hu = a.hu.copy()
    if subtype == INTRAPARENCHYMAL and rng.uniform() < 0.5:
        hu -= _edema(a, region, rng) * (alpha < 0.5)
    blended = hu * (1 - alpha) + alpha * (clot + _field(rng, hu.shape, 0.7, a.noise_hu))
    hu = np.where(rim, np.maximum(hu, blended), blended)
    changed = hu != a.hu
    out = np.array(values, copy=True)
    new = a.intensity.from_hu(hu[changed])
    out[changed] = np.rint(new).astype(out.dtype) if out.dtype == np.uint8 else new.astype(out.dtype)
    return Painted(out, region, subtype, float(region.sum() * a.spacing_mm ** 2), blood)


def paint_bleed(a: Anatomy, values: np.ndarray, subtype: str, rng, difficulty: float) -> Painted | None:
    """A bleed of `subtype` painted into the slice, or None when the slice has no room for it (no lateral ventricle
    for an intraventricular bleed, no sulci for a subarachnoid one, no bony convexity, too small a result)."""
    region = SHAPES[subtype](a, rng, difficulty) if a.inside.any() else None
    if region is None or region.sum() * a.spacing_mm ** 2 < MIN_AREA_MM2:
        return None
    painted = paint(a, values, region, subtype, rng, difficulty)
    return painted if painted.mask.any() else None
