"""Head CT phantom anatomy painted per slice on a cached polar grid; u left-right, v anterior (-) to posterior (+)."""
from __future__ import annotations

import functools
import math

import numpy as np

from core.subtypes import EPIDURAL, INTRAPARENCHYMAL, INTRAVENTRICULAR, SUBARACHNOID, SUBDURAL, SUBTYPES

FOV_MM = 230.0   # field of view across the image; pixel spacing = FOV_MM / size
SLICE_MM = 5.0   # distance between adjacent slices of a stack, as in routine head CT
HARD_NEGATIVES = ("pineal", "choroid", "streaks", "skull_base")
TISSUES = ("air", "scalp", "skull", "diploe", "csf", "grey", "white", "ventricle", "falx",
           "calcification", "bone", "edema", "blood")
(AIR, SCALP, SKULL, DIPLOE, CSF, GREY, WHITE, VENTRICLE, FALX, CALCIFICATION, BONE, EDEMA,
 BLOOD) = range(len(TISSUES))
# Tissue of a pixel that lies inside n of the nested layer boundaries (see _layers).
_LAYERS = np.array([AIR, SCALP, SKULL, DIPLOE, SKULL, CSF, GREY, WHITE], np.uint8)
_N_THETA = 4096  # angle bins: 0.15 mm of arc at the skull, finer than any pixel
_THETA = np.arange(_N_THETA) * (2 * np.pi / _N_THETA) - np.pi


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    """Pixel x/y in mm (broadcastable row and column), radius and angle bin about the centre."""
    c = ((np.arange(size) - (size - 1) / 2) * (FOV_MM / size)).astype(np.float32)
    x, y = c[None, :], c[:, None]
    r = np.hypot(x, y)
    theta_bin = np.rint((np.arctan2(y, x) + np.pi) * (_N_THETA / (2 * np.pi))).astype(np.intp) % _N_THETA
    for a in (x, y, r, theta_bin):
        a.flags.writeable = False
    return x, y, r, theta_bin


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def _head_radius(p: dict, phi):
    """Outer head radius (mm) at head-frame angle phi: an egg-shaped ellipse with smooth bumps."""
    a, b = p["axes"]
    ellipse = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    k = np.arange(2, 2 + len(p["bumps"]))[:, None]
    bumps = p["bumps"] @ np.cos(k * phi + p["bump_phase"][:, None])
    return ellipse * (1 + bumps + p["egg"] * np.sin(phi))


def sample_patient(rng, subtype, difficulty, k, hard_negatives=None) -> dict:
    """Everything that stays fixed along a stack of k slices of one patient (a dict of parameters)."""
    u = rng.uniform
    hu = np.zeros(len(TISSUES), np.float32)
    hu[[AIR, SCALP, SKULL, DIPLOE, GREY, WHITE, FALX, CALCIFICATION, BONE, EDEMA]] = (
        -1000, u(35, 45), u(1400, 1800), u(700, 1000), u(35, 41), u(25, 31), u(60, 80),
        u(150, 400), u(300, 900), u(14, 20))
    hu[[CSF, VENTRICLE]] = u(2, 8)
    hu[BLOOD] = np.clip(85 - 30 * difficulty + u(-3, 3), 51, 90)  # harder = lower contrast, ~85 -> ~50 HU
    # Stack centre, mm above the ventricle bodies (in view for a ventricular bleed).
    zc = u(-10, 10) if subtype == INTRAVENTRICULAR else u(-15, 25)
    n_sulci = int(rng.integers(28, 40))
    p = dict(
        hu=hu, angle=u(-0.17, 0.17), shift_mm=u(-8, 8, 2), axes=(u(68, 80), u(85, 97)),
        bumps=rng.normal(0, 0.008, 3), bump_phase=u(0, 2 * np.pi, 3), egg=u(0, 0.05),
        z_widest=u(-15, -5), scalp=u(3, 6), skull=u(5, 8.5), csf=u(0.8, 1.5), cortex=u(2.5, 3.5),
        fissure=u(0.4, 1.0),
        # Jittered even spacing keeps sulci apart; the last two, deep ones are the sylvian fissures.
        sulci=np.r_[(np.arange(n_sulci) + u(-0.3, 0.3, n_sulci)) * (2 * np.pi / n_sulci) + u(0, 1),
                    -0.35, np.pi + 0.35],
        sulcus_depth=np.r_[u(3, 18, n_sulci), u(22, 30, 2)], sulcus_drift=u(-0.004, 0.004),
        sulcus_bend=np.r_[u(-0.005, 0.005, n_sulci), 0.004, -0.004],  # rad per mm of depth: not radial
        sulcus_width=u(0.3, 0.9) * u(0.6, 1.4, n_sulci + 2),  # half widths; wider sulci = older brain
        vent_w=u(3.5, 7), vent_l=u(24, 32), vent_v0=u(-3, 5), vent_curve=u(6, 12), septum=u(1, 2),
        noise=u(2, 5), blur=u(0.3, 0.7),
        z=zc + (np.arange(k) - (k - 1) / 2) * SLICE_MM,
        subtype=subtype or "", difficulty=float(difficulty),
    )
    if hard_negatives is None:
        hard_negatives = [h for h, prob in zip(HARD_NEGATIVES, (0.35, 0.35, 0.3, 0.25)) if u() < prob]
    p["hard"] = set(hard_negatives)
    p["phi"] = _wrap(_THETA - p["angle"])  # head-frame angle of every image-angle bin
    p["outer"] = _head_radius(p, p["phi"])
    p["calc_r"] = u(1.5, 3.0, 3)
    # Streaks: (direction, offset mm, width mm, HU); mostly dark.  Bones: (angle, depth, along, across mm).
    p["streaks"] = [(u(0, np.pi), u(-40, 40), u(1, 3), u(-25, -10) if u() < 0.7 else u(10, 20))
                    for _ in range(int(rng.integers(1, 4)))]
    p["bones"] = [(-np.pi / 2 + u(-0.9, 0.9), u(1, 6), u(2, 6), u(1.5, 3.5)) for _ in range(int(rng.integers(2, 5)))]
    p["z_bones"] = p["z"][0] - u(0, 4)
    if subtype:
        p["bleed"] = _sample_bleed(rng, subtype, p)
    return p


def _sample_bleed(rng, subtype, p) -> dict:
    u = rng.uniform
    k = len(p["z"])  # an ellipsoid in z centred on one slice: a contiguous run of slices
    j = int(rng.integers(max(0, k // 2 - 1), min(k, k // 2 + 2)))  # near the middle: most slices bleed
    # Half heights in mm: a subdural runs far up and down the convexity, a haematoma is a lump.
    z_half = {INTRAPARENCHYMAL: u(5, 15), SUBDURAL: u(10, 25), EPIDURAL: u(6, 15),
              SUBARACHNOID: u(8, 20), INTRAVENTRICULAR: u(8, 15)}[subtype]
    b = dict(z=p["z"][j] + u(-1.5, 1.5), z_half=z_half * (1 - 0.4 * p["difficulty"]),
             scale=1 - 0.65 * p["difficulty"])
    if subtype == INTRAPARENCHYMAL:
        b.update(phi=u(-np.pi, np.pi), rho=u(0.25, 0.65), radius=u(8, 20), elong=u(0.6, 1), tilt=u(0, np.pi),
                 lobe=u(0.05, 0.2), lobe_phase=u(0, 2 * np.pi), edema=u(2, 5) if u() < 0.6 else 0.0)
    elif subtype == SUBDURAL:  # crescent: long and thin, stays on one side of the falx
        span = u(0.6, 1.2)
        b.update(span=span, thick=u(5, 14), phi=rng.choice([0, np.pi]) + u(-1, 1) * (1.45 - span))
    elif subtype == EPIDURAL:  # lens: short and thick
        b.update(span=u(0.25, 0.5), thick=u(8, 22), phi=u(-np.pi, np.pi))
    elif subtype == SUBARACHNOID:  # sylvian fissure, interhemispheric fissure or a convexity
        b.update(phi=[-0.35, np.pi + 0.35, -np.pi / 2, u(-np.pi, np.pi)][int(rng.integers(4))],
                 span=u(0.3, 0.8), widen=u(0.3, 1.0))
    else:
        b.update(sides=[(-1,), (1,), (-1, 1)][int(rng.integers(3))], depth=u(5, 14))
    return b


def _roi(p, size, u0, u1, v0, v1):
    """Row/column slices bounding a head-frame box, and the head-frame u, v grids inside them."""
    x, y = _grid(size)[:2]
    ca, sa = math.cos(p["angle"]), math.sin(p["angle"])
    cu, cv = np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1])
    half, sp = (size - 1) / 2, FOV_MM / size
    xs, ys = (cu * ca - cv * sa) / sp + half, (cu * sa + cv * ca) / sp + half
    c0, c1 = np.clip([np.floor(xs.min()), np.ceil(xs.max()) + 1], 0, size).astype(int)
    r0, r1 = np.clip([np.floor(ys.min()), np.ceil(ys.max()) + 1], 0, size).astype(int)
    xr, yr = x[:, c0:c1], y[r0:r1]
    return (slice(r0, r1), slice(c0, c1)), xr * ca + yr * sa, yr * ca - xr * sa


def _ellipse(u, v, cu, cv, a, b, tilt=0.0):
    du, dv = u - cu, v - cv
    c, s = np.cos(tilt), np.sin(tilt)
    return ((du * c + dv * s) / a) ** 2 + ((dv * c - du * s) / b) ** 2 < 1


def _sulci(p, phi, z):
    """Per angle bin, float32 LUTs of the nearest sulcus: signed angular offset, bend, depth, width."""
    centres = _wrap(p["sulci"] + p["sulcus_drift"] * z)
    order = np.argsort(centres)
    order = np.r_[order[-1], order, order[0]]  # wrap around the circle
    ext = np.r_[centres[order[0]] - 2 * np.pi, centres[order[1:-1]], centres[order[-1]] + 2 * np.pi]
    pos = np.searchsorted(ext, phi).clip(1, len(ext) - 1)
    nearest = np.where((ext[pos] - phi) < (phi - ext[pos - 1]), pos, pos - 1)
    k = order[nearest]
    return [a.astype(np.float32) for a in (phi - ext[nearest], p["sulcus_bend"][k], p["sulcus_depth"][k],
                                           p["sulcus_width"][k])]


def _layers(p, size, z, sp):
    """Scalp, skull tables, diploe, CSF, cortex with sulci and white matter from nested boundaries."""
    _, _, r, tb = _grid(size)
    phi = p["phi"]
    outer = p["outer"] * np.sqrt(max(0.3, 1 - ((z - p["z_widest"]) / 90) ** 2))
    skull = p["skull"] * (1 - 0.2 * np.cos(2 * phi))  # thinner temporal bone, thicker front and back
    inner = outer - p["scalp"] - skull
    code = np.zeros(r.shape, np.uint8)
    for radius in (outer, outer - p["scalp"], inner + 0.7 * skull, inner + 0.25 * skull):
        code += np.take(radius.astype(np.float32), tb) > r
    d_in = np.take(inner.astype(np.float32), tb) - r  # depth below the inner table
    code += d_in > 0
    offset, bend, depth, width = (np.take(lut, tb) for lut in _sulci(p, phi, z))
    across = np.abs(offset - bend * d_in) * r - np.maximum(width, sp / 2)  # distance from its centre line
    sulcus = np.maximum(across, d_in - depth)
    pial = np.minimum(d_in - max(p["csf"], 0.6 * sp), sulcus)  # distance below the brain surface
    code += pial >= 0
    code += pial >= max(p["cortex"], sp)
    return np.take(_LAYERS, code), d_in, pial, phi, inner


def _paint_midline_and_ventricles(p, size, z, sp, tissue, d_in, bleed_scale):
    b, vg = p.get("bleed"), np.sqrt(max(0.0, 1 - (z / 35) ** 2))  # lateral ventricles fade above/below
    deep = np.sqrt(max(0.0, 1 - ((z + 8) / 18) ** 2))  # thalami, basal ganglia, third ventricle
    W, L, v0 = p["vent_w"] * vg, p["vent_l"] * (0.6 + 0.4 * vg), p["vent_v0"]
    # Interhemispheric fissure with the falx in it, interrupted by the corpus callosum.
    box, u, v = _roi(p, size, -p["fissure"], p["fissure"], -110, 110)
    out = (d_in[box] > 0) & ((v < v0 - 0.75 * L * vg) | (v > v0 + 0.95 * L * vg))
    tissue[box][out & (np.abs(u) < max(p["fissure"], sp / 2))] = CSF
    tissue[box][out & (np.abs(u) < max(0.5, 0.75 * sp))] = FALX
    reach = p["septum"] + 1.1 * p["vent_w"] + p["vent_curve"] + 1.5 * p["vent_w"] + 30
    box, u, v = _roi(p, size, -reach, reach, v0 - p["vent_l"] - 5, v0 + p["vent_l"] + 20)
    t = tissue[box]
    vt = v0 + 0.15 * L  # thalamic level
    if deep > 0:
        for s in (-1, 1):
            t[_ellipse(u, v, s * 9, vt, 7 * deep, 10 * deep)] = GREY
            t[_ellipse(u, v, s * 22, v0 - 0.15 * L, 5 * deep, 13 * deep, -s * 0.3)] = GREY
        t[(np.abs(u) < max(1.2 * deep, sp / 2)) & (np.abs(v - vt) < 9 * deep)] = VENTRICLE
    sides = {}
    if W > 0:
        tt = (v - v0) / L
        inside = np.abs(tt) < 1
        half_width = W * np.sqrt(np.clip(1 - tt ** 2, 0, None)) * (1 + 0.4 * tt)  # wider atria
        centre = p["septum"] + 1.1 * W + p["vent_curve"] * tt ** 2  # horns diverge
        for s in (-1, 1):
            sides[s] = inside & (np.abs(u - s * centre) < np.maximum(half_width, sp / 2))
            t[sides[s]] = VENTRICLE
    calcs = []
    if "choroid" in p["hard"] and W > 0:
        ca = p["septum"] + 1.1 * W + p["vent_curve"] * 0.3
        calcs += [(s * ca, v0 + 0.55 * L, p["calc_r"][i] * vg) for i, s in enumerate((-1, 1))]
    if "pineal" in p["hard"] and deep > 0:
        calcs.append((0.0, vt + 10 * deep, p["calc_r"][2] * deep))
    for cu, cv, rad in calcs:
        t[_ellipse(u, v, cu, cv, max(rad, 0.6 * sp), max(rad, 0.6 * sp))] = CALCIFICATION
    if b is not None and p["subtype"] == INTRAVENTRICULAR and bleed_scale > 0 and sides:
        # Supine patient: blood settles posteriorly, below a fluid level that is level in the image.
        vent = np.logical_or.reduce([sides[s] for s in b["sides"]])
        rows = np.flatnonzero(vent.any(1))
        if rows.size:
            y = _grid(size)[1][box[0]]
            level = y[rows[-1], 0] - max(b["depth"] * b["scale"] * bleed_scale, 3 * sp)
            t[vent & (y > level)] = BLOOD


def _paint_bleed(p, size, sp, tissue, d_in, pial, phi, inner, bz):
    b, tb = p["bleed"], _grid(size)[3]
    sub, scale = p["subtype"], b["scale"] * bz
    if sub == INTRAPARENCHYMAL:
        rho = b["rho"] * np.interp(b["phi"], phi, inner, period=2 * np.pi)
        cu, cv, ra = rho * np.cos(b["phi"]), rho * np.sin(b["phi"]), max(b["radius"] * scale, 1.5 * sp)
        reach = ra * 1.3 + b["edema"]
        box, u, v = _roi(p, size, cu - reach, cu + reach, cv - reach, cv + reach)
        du, dv = u - cu, v - cv
        c, s = np.cos(b["tilt"]), np.sin(b["tilt"])
        a1, a2 = du * c + dv * s, (dv * c - du * s) / b["elong"]
        q = np.hypot(a1, a2) / (ra * (1 + b["lobe"] * np.cos(3 * np.arctan2(a2, a1) + b["lobe_phase"])))
        t = tissue[box]
        brain = d_in[box] > 0
        if b["edema"]:
            t[(q < 1 + b["edema"] / ra) & brain & ((t == GREY) | (t == WHITE))] = EDEMA
        t[(q < 1) & brain] = BLOOD
    elif sub in (SUBDURAL, EPIDURAL):
        tt = _wrap(phi - b["phi"]) / b["span"]
        profile = 1 - tt ** 4 if sub == SUBDURAL else np.sqrt(np.clip(1 - tt ** 2, 0, None))
        thick = np.where(np.abs(tt) < 1, np.maximum(b["thick"] * scale * profile, 1.5 * sp), 0)
        tissue[(d_in > 0) & (d_in < np.take(thick.astype(np.float32), tb))] = BLOOD
    elif sub == SUBARACHNOID:
        sector = np.abs(_wrap(phi - b["phi"])) < max(b["span"] * scale, 0.12)
        region = np.take(sector, tb) & (d_in > 0)
        # Blood fills and distends the sulci and fissures of the sector.
        tissue[region & ((tissue == CSF) | ((pial < b["widen"]) & (tissue == GREY)))] = BLOOD


def paint_anatomy(p: dict, z: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient p's HU image (float32) and tissue map (uint8) at height z mm, before the scanner blurs, adds noise
    and centres it (core.phantom.scanner)."""
    sp = FOV_MM / size
    x, y = _grid(size)[:2]
    tissue, d_in, pial, phi, inner = _layers(p, size, z, sp)
    b = p.get("bleed")
    bz = np.sqrt(max(0.0, 1 - ((z - b["z"]) / b["z_half"]) ** 2)) if b else 0.0
    _paint_midline_and_ventricles(p, size, z, sp, tissue, d_in, bz)
    skull_base = np.sqrt(max(0.0, 1 - ((z - p["z_bones"]) / 12) ** 2))
    if "skull_base" in p["hard"] and skull_base > 0:  # partial volume of orbital roofs and clinoids
        for ang, depth, along, across in p["bones"]:
            rad = np.interp(ang, phi, inner, period=2 * np.pi) - depth
            cu, cv = rad * np.cos(ang), rad * np.sin(ang)
            a, c = max(along * skull_base, sp / 2), max(across * skull_base, sp / 2)
            box, u, v = _roi(p, size, cu - a, cu + a, cv - a, cv + a)
            tissue[box][_ellipse(u, v, cu, cv, a, c, ang + np.pi / 2) & (d_in[box] > 0)] = BONE
    if bz > 0 and p["subtype"] != INTRAVENTRICULAR:
        _paint_bleed(p, size, sp, tissue, d_in, pial, phi, inner, bz)
    hu = np.take(p["hu"], tissue)
    if "streaks" in p["hard"]:  # beam hardening: thin dark (sometimes bright) bands across the head
        for ang, offset, width, amp in p["streaks"]:
            hu += amp * np.exp(-((x * math.cos(ang) + y * math.sin(ang) - offset) / width) ** 2)
    return hu, tissue
