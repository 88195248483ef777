"""What a real slice is made of, read from the slice itself: its intensity scale and its anatomy.

Intensity: DICOM pixels are HU already. An 8-bit slice was windowed by someone else, with a window we are not
told, so the mapping grey = offset + (HU - 28) * scale is estimated from the slice's own histogram inside the
skull: the parenchyma is its mode (white matter dominates, ~28 HU) and the darkest 2 % (CSF of the ventricles
and sulci) lie ~25 HU below it; the scale is clamped to windows 40-160 HU wide.

Anatomy (a heuristic, tested on phantoms whose truth is known): the head is core.io.framing's; bone is what the
window saturates, or nearly (or > 120 HU); the intracranial space is the largest hole the closed skull encloses (at the
skull base, where the ring is open, the head eroded by the scalp and bone); ventricles are CSF-dark regions of
some size in its central part that no sulcus joins to the surface; sulci are the other CSF-dark regions (sulci,
fissures, cisterns) that reach the surface or are large. CSF is read after a slight smoothing, so that noise does not
pass for it, and is neither the air the ring encloses at the skull base nor a streak artifact's dark band. The
parenchyma is the rest at soft-tissue density. Pixel size: the DICOM's, else a 150 mm wide head.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.io.framing import head_region
from core.io.imaging import WINDOWS, apply_window, to_uint8

PARENCHYMA_HU = 28.0           # the mode of a slice inside the skull: white matter dominates
CSF_GAP_HU = 25.0            # parenchyma mode minus the darkest 2 % inside the skull (CSF, ~3 HU)
HEAD_WIDTH_MM = 150.0        # an adult head, scalp to scalp, where the file does not say the pixel size
BONE_HU = 120.0
CSF_BELOW_HU = 20.0          # darker than this inside the skull: CSF (ventricles, sulci, cisterns)
SOFT_HU = (15.0, 55.0)       # parenchyma
MIN_VENTRICLE_MM2 = 25.0
CSF_SMOOTH_MM = 0.6          # CSF is read on the slice smoothed this much: single noisy pixels are not sulci
MIN_SULCUS_MM2 = 2.0         # smaller CSF-dark specks left after smoothing are noise,
MIN_CISTERN_MM2 = 12.0       # and so are those up to this size that never reach the brain's surface: no sulcus
SURFACE_MM = 3.0             # CSF this close to the inner table lies on the brain's surface
MAX_SULCUS_SPAN_MM = 60.0    # a CSF-dark band reaching the surface at points further apart is a streak artifact
NOISE_SMOOTH_PX = 2.0        # the slice's noise: what this smoothing removes (a 3x3 median misses JPEG-blurred grain)
AIR_HU = -100.0              # sinus and mastoid air the skull ring encloses at its base (HU input)
AIR_GREY = 3                 # the same in a windowed slice: the window's floor, where air saturates


@dataclass(frozen=True)
class Intensity:
    """values = offset + (HU - PARENCHYMA_HU) * scale, clipped to [0, ceiling]; HU input: the identity."""
    offset: float
    scale: float
    ceiling: float = np.inf

    def to_hu(self, values: np.ndarray) -> np.ndarray:
        return PARENCHYMA_HU + (np.asarray(values, np.float32) - self.offset) / self.scale

    def from_hu(self, hu: np.ndarray) -> np.ndarray:
        return np.clip(self.offset + (np.asarray(hu, np.float32) - PARENCHYMA_HU) * self.scale, 0, self.ceiling)


HU_INTENSITY = Intensity(PARENCHYMA_HU, 1.0)


def estimate_intensity(grey: np.ndarray, inside: np.ndarray) -> Intensity:
    """The window a uint8 slice was rendered with, from its histogram inside the skull (module docstring)."""
    values = grey[inside & (grey > 4) & (grey < 250)].astype(np.float32)
    if values.size < 100:
        return Intensity(255 * PARENCHYMA_HU / 80, 255 / 80, 255.0)   # too little brain to read: the standard brain window
    hist = ndimage.gaussian_filter1d(np.bincount(values.astype(int), minlength=256).astype(float), 3)
    mode = float(np.argmax(hist))
    gap = mode - float(np.percentile(values, 2))
    scale = float(np.clip(gap / CSF_GAP_HU, 255 / 160, 255 / 40))
    return Intensity(mode, scale, 255.0)


@dataclass
class Anatomy:
    hu: np.ndarray              # float32, HU (estimated for windowed input)
    intensity: Intensity
    spacing_mm: float
    head: np.ndarray            # bool masks, all of the slice's shape
    bone: np.ndarray
    inside: np.ndarray          # intracranial space
    ventricles: np.ndarray
    sulci: np.ndarray
    parenchyma: np.ndarray
    depth_mm: np.ndarray        # float32: distance from the inner table, inside (calcified holes do not count)
    noise_hu: float             # the slice's pixel noise (robust std of the high-pass), HU

    @property
    def centre(self) -> tuple[float, float]:
        return ndimage.center_of_mass(self.inside)

    def angles(self) -> np.ndarray:
        """Angle of every pixel about the intracranial centre (radians, image axes)."""
        cy, cx = self.centre
        rows, cols = np.indices(self.hu.shape)
        return np.arctan2(rows - cy, cols - cx)


def disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def intracranial(head: np.ndarray, bone: np.ndarray, px_per_mm: float) -> np.ndarray:
    """The largest hole the closed skull encloses; where the ring is open, the head minus 10 mm of scalp and bone."""
    ring = ndimage.binary_closing(bone, disk(round(2 * px_per_mm)))
    inside = _largest(ndimage.binary_fill_holes(ring) & ~ndimage.binary_dilation(bone, disk(1)) & head)
    if inside.sum() < 0.25 * head.sum():
        inside = ndimage.binary_erosion(head, disk(round(10 * px_per_mm))) & ~ndimage.binary_dilation(bone, disk(1))
        inside = _largest(inside)
    return ndimage.binary_opening(inside, disk(1))


def ventricles_of(csf: np.ndarray, depth_mm: np.ndarray, px_mm: float) -> np.ndarray:
    """CSF regions of at least MIN_VENTRICLE_MM2 whose centre lies deep (> 35 % of the deepest point) and which stay
    clear of the cortex (> 20 %): a region that reaches it is a sulcus, fissure or cistern open to the surface."""
    labels, n = ndimage.label(ndimage.binary_opening(csf, disk(2)))   # threads (streaks, thin sulci) do not join
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:] * px_mm ** 2
    deepest = float(depth_mm.max())
    keep = ((area >= MIN_VENTRICLE_MM2) & (ndimage.mean(depth_mm, labels, index) > 0.35 * deepest)
            & (ndimage.minimum(depth_mm, labels, index) > 0.2 * deepest))
    return np.concatenate([[False], keep])[labels]


def sulci_of(csf: np.ndarray, ventricles: np.ndarray, depth_mm: np.ndarray, px_mm: float) -> np.ndarray:
    """The CSF regions outside the ventricles that are sulci (reaching the surface), fissures or cisterns (large); not
    a ventricle's rim, nor the dark band of a beam-hardening streak, which runs on into a ventricle or reaches the
    surface at points further apart than any sulcus (MAX_SULCUS_SPAN_MM)."""
    labels, n = ndimage.label(csf & ~ventricles)
    index = np.arange(1, n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:] * px_mm ** 2
    at_surface = np.where(depth_mm < SURFACE_MM, labels, 0)
    span = np.hypot(*(ndimage.maximum(axis, at_surface, index) - ndimage.minimum(axis, at_surface, index)
                      for axis in np.indices(csf.shape))) * px_mm
    reaches = ndimage.minimum(depth_mm, labels, index) < SURFACE_MM
    by_ventricle = np.isin(index, labels[ndimage.binary_dilation(ventricles)])
    keep = ((area >= MIN_SULCUS_MM2) & (reaches | (area >= MIN_CISTERN_MM2)) & (span <= MAX_SULCUS_SPAN_MM)
            & ~by_ventricle)
    return np.concatenate([[False], keep])[labels]


def bone_grey(head_values: np.ndarray) -> float:
    """Bone in a windowed slice: what the window saturates, or nearly (some exports stop short of 255)."""
    return float(min(250.0, max(160.0, 0.95 * np.percentile(head_values, 99.5))))


def read_anatomy(image: np.ndarray, is_hu: bool, spacing_mm: float | None = None) -> Anatomy | None:
    """The anatomy of one slice (HU or a windowed uint8 grey image), or None when no head is found."""
    grey = to_uint8(apply_window(image, *WINDOWS["brain"])) if is_hu else image
    head = head_region(grey)
    if head is None:
        return None
    width = np.flatnonzero(head.any(axis=0))
    px_mm = spacing_mm or HEAD_WIDTH_MM / max(1, width[-1] - width[0] + 1)
    bone = head & (image > BONE_HU) if is_hu else head & (grey >= bone_grey(grey[head]))
    inside = intracranial(head, bone, 1 / px_mm)
    intensity = HU_INTENSITY if is_hu else estimate_intensity(grey, inside)
    hu = np.asarray(image, np.float32) if is_hu else intensity.to_hu(grey)
    depth_mm = ndimage.distance_transform_edt(ndimage.binary_fill_holes(inside)).astype(np.float32) * px_mm
    smooth = ndimage.gaussian_filter(hu, CSF_SMOOTH_MM / px_mm)
    air = smooth < (AIR_HU if is_hu else intensity.to_hu(AIR_GREY))
    csf = inside & (smooth < CSF_BELOW_HU) & ~ndimage.binary_dilation(air, disk(round(1 / px_mm)))
    ventricles = ventricles_of(csf, depth_mm, px_mm) if inside.any() else np.zeros_like(inside)
    sulci = sulci_of(csf, ventricles, depth_mm, px_mm)
    parenchyma = inside & ~csf & (hu >= SOFT_HU[0]) & (hu <= SOFT_HU[1])
    high_pass = hu - ndimage.gaussian_filter(hu, NOISE_SMOOTH_PX)
    noise = 1.4826 * float(np.median(np.abs(high_pass[parenchyma]))) if parenchyma.any() else 3.0
    return Anatomy(hu, intensity, float(px_mm), head, bone, inside, ventricles, sulci, parenchyma, depth_mm, noise)
