"""Hemorrhages painted into a real slice: one shape per subtype, placed by the slice's own anatomy, at acute-blood
density with partial-volume edges and the slice's own noise. Higher difficulty = smaller and fainter."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.insert.anatomy import Anatomy, disk

PAINTER_VERSION = 3         # part of the painted-set cache key: bump it when what is painted or written changes
SUBTYPES = ("intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")
BLOOD_HU = (50.0, 90.0)      # acute blood
EDEMA_DROP_HU = 8.0          # a hypodense rim around some intraparenchymal bleeds
MIN_AREA_MM2 = 8.0           # a painted bleed smaller than this is not drawn (the subtype does not fit)


@dataclass
class Painted:
    values: np.ndarray   # the slice with the bleed, in the input's own values (HU or uint8 grey)
    mask: np.ndarray     # bool: the painted shape (its blurred edge reaches ~2 px beyond)
    subtype: str
    area_mm2: float
    blood_hu: float


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _size(rng, lo: float, hi: float, difficulty: float) -> float:
    return float(rng.uniform(lo, hi)) * (1 - 0.6 * difficulty)


def intraparenchymal(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """A lobed ellipse in the parenchyma, clear of the ventricles and the inner table."""
    radius = max(_size(rng, 6, 20, difficulty), 3.0)
    clear = ndimage.distance_transform_edt(~a.ventricles) * a.spacing_mm > 2
    room = a.parenchyma & clear & (a.depth_mm > radius + 3)
    if not room.any():
        return None
    rows, cols = np.nonzero(room)
    pick = int(rng.integers(len(rows)))
    dy, dx = (np.indices(a.hu.shape) - np.array([rows[pick], cols[pick]])[:, None, None]) * a.spacing_mm
    tilt, elong, lobe, phase = rng.uniform(0, np.pi), rng.uniform(0.6, 1), rng.uniform(0.05, 0.2), rng.uniform(0, 6.3)
    u, v = dx * np.cos(tilt) + dy * np.sin(tilt), (dy * np.cos(tilt) - dx * np.sin(tilt)) / elong
    q = np.hypot(u, v) / (radius * (1 + lobe * np.cos(3 * np.arctan2(v, u) + phase)))
    return (q < 1) & a.inside & ~a.ventricles


def _convexity_angle(a: Anatomy, angles: np.ndarray, rng, bins: int = 72) -> float:
    """An angle where the intracranial space reaches at least 85 % of its widest: the convexity, not the flat
    skull base or a fossa's edge, where extra-axial blood collects."""
    cy, cx = a.centre
    rows, cols = np.nonzero(a.inside)
    index = ((angles[rows, cols] + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    reach = np.zeros(bins)
    np.maximum.at(reach, index, np.hypot(rows - cy, cols - cx))
    wide = np.flatnonzero(reach >= 0.85 * reach.max())
    return float((rng.choice(wide) + rng.uniform()) / bins * 2 * np.pi - np.pi)


def _along_table(a: Anatomy, rng, difficulty: float, span: tuple, thick: tuple, lens: bool) -> np.ndarray | None:
    """Blood between brain and inner table over an arc: a crescent (subdural) or a biconvex lens (epidural)."""
    angles = a.angles()
    centre, half = _convexity_angle(a, angles, rng), rng.uniform(*span)
    t = _wrap(angles - centre) / half
    profile = np.sqrt(np.clip(1 - t ** 2, 0, None)) if lens else np.clip(1 - t ** 4, 0, None)
    thickness = max(_size(rng, *thick, difficulty), 2.0) * profile
    return a.inside & (np.abs(t) < 1) & (a.depth_mm < thickness)


def subdural(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    return _along_table(a, rng, difficulty, span=(0.5, 1.1), thick=(4, 14), lens=False)


def epidural(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    return _along_table(a, rng, difficulty, span=(0.25, 0.5), thick=(8, 22), lens=True)


def subarachnoid(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """The sulci and fissures of a sector filled (and slightly distended) by blood."""
    half = max(rng.uniform(0.4, 1.2) * (1 - 0.5 * difficulty), 0.2)
    sector = np.abs(_wrap(a.angles() - rng.uniform(-np.pi, np.pi))) < half
    widen = disk(max(1, round(rng.uniform(0.5, 1.5) / a.spacing_mm)))
    filled = ndimage.binary_dilation(a.sulci & sector, widen) & a.inside & ~a.ventricles & (a.depth_mm < 20)
    return filled if filled.any() else None


def intraventricular(a: Anatomy, rng, difficulty: float) -> np.ndarray | None:
    """A dependent layer (the image's lower rows: posterior, supine patient) in one ventricle."""
    labels, n = ndimage.label(a.ventricles)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    chosen = labels == int(rng.choice(np.argsort(sizes)[::-1][:2])) + 1 if n > 1 else labels == 1
    rows = np.flatnonzero(chosen.any(axis=1))
    depth = max(_size(rng, 4, 12, difficulty), 2.0) / a.spacing_mm
    level = rows[-1] - min(depth, 0.8 * (rows[-1] - rows[0] + 1))
    return chosen & (np.indices(a.hu.shape)[0] > level)


SHAPES = {"intraparenchymal": intraparenchymal, "subdural": subdural, "epidural": epidural,
          "subarachnoid": subarachnoid, "intraventricular": intraventricular}


def _field(rng, shape, smooth_px: float, std: float) -> np.ndarray:
    """Smoothed Gaussian noise of a given std: 0.7 px is reconstructed CT noise, 4 px a clot's heterogeneity."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), smooth_px)
    return field / max(float(field.std()), 1e-6) * std


def paint(a: Anatomy, values: np.ndarray, region: np.ndarray, subtype: str, rng, difficulty: float) -> Painted:
    """Blend blood into `region`: partial-volume edges (the mask blurred), a clot's slow heterogeneity, the slice's
    noise; an intraparenchymal bleed may get a hypodense rim. Pixels outside the blurred edge keep their bytes."""
    lo, hi = BLOOD_HU[0] + 12 * (1 - difficulty), BLOOD_HU[0] + 15 + 25 * (1 - difficulty)
    blood = float(rng.uniform(lo, min(hi, BLOOD_HU[1])))
    alpha = np.clip(ndimage.gaussian_filter(region.astype(np.float32), 0.6), 0, 1) * a.inside
    clot = blood + _field(rng, a.hu.shape, 4.0, 3.0)
    hu = a.hu.copy()
    if subtype == "intraparenchymal" and rng.uniform() < 0.5:
        rim = ndimage.binary_dilation(region, disk(max(1, round(rng.uniform(2, 5) / a.spacing_mm)))) & a.parenchyma
        hu -= EDEMA_DROP_HU * np.clip(ndimage.gaussian_filter(rim.astype(np.float32), 1.0), 0, 1) * (alpha < 0.5)
    hu = hu * (1 - alpha) + alpha * (np.clip(clot, *BLOOD_HU) + _field(rng, hu.shape, 0.7, a.noise_hu))
    changed = hu != a.hu
    out = np.array(values, copy=True)
    new = a.intensity.from_hu(hu[changed])
    out[changed] = np.rint(new).astype(out.dtype) if out.dtype == np.uint8 else new.astype(out.dtype)
    mask = region & a.inside
    return Painted(out, mask, subtype, float(mask.sum() * a.spacing_mm ** 2), blood)


def paint_bleed(a: Anatomy, values: np.ndarray, subtype: str, rng, difficulty: float) -> Painted | None:
    """A bleed of `subtype` painted into the slice, or None when the slice has no room for it (no ventricle for
    an intraventricular bleed, no sulci for a subarachnoid one, too small a result)."""
    region = SHAPES[subtype](a, rng, difficulty)
    if region is None or region.sum() * a.spacing_mm ** 2 < MIN_AREA_MM2:
        return None
    painted = paint(a, values, region, subtype, rng, difficulty)
    return painted if painted.mask.any() else None
