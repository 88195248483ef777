"""How a scanner and its site turn a phantom head into an image: the head's blur, noise of some texture, the
reconstruction kernel, slice thickness (partial volume), field of view and the exported window. DEFAULT is the
phantoms' own; OTHER is the demo's external site (docs/NOTES.md, "Other-scanner phantoms")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.io.imaging import WINDOWS
from core.phantom.anatomy import AIR, FOV_MM, paint_anatomy

KERNEL_MM = 1.0      # scale of the reconstruction kernel's edge enhancement or smoothing
SLAB_STEP_MM = 1.25  # at most this far between the planes a thick slice averages


@dataclass(frozen=True)
class Scanner:
    name: str = "default"
    noise: float = 1.0          # times each head's own noise sigma (2-5 HU)
    grain_mm: float = 0.0       # noise correlation length (a Gaussian's sigma); 0: white noise
    sharpen: float = 0.0        # kernel: unsharp-mask amount at KERNEL_MM; negative (down to -1): a smoother kernel
    slice_mm: float = 0.0       # slab thickness the image averages (partial volume); 0: one thin plane
    fov_mm: float = FOV_MM      # reconstruction field of view: a wider one shows the head smaller
    window: tuple[float, float] = WINDOWS["brain"]   # (centre, width) HU of the exported brain window

    @property
    def set_name(self) -> str:
        """The folder name of a phantom set it images, and of that set's stored evaluations."""
        return f"{self.name}-phantoms"

    def __post_init__(self):
        bad = [f"{name} {value:g}" for name, value, ok in (
            ("noise", self.noise, self.noise >= 0), ("grain_mm", self.grain_mm, self.grain_mm >= 0),
            ("sharpen", self.sharpen, self.sharpen >= -1), ("slice_mm", self.slice_mm, self.slice_mm >= 0),
            ("fov_mm", self.fov_mm, self.fov_mm > 0), ("window width", self.window[1], self.window[1] > 0))
            if not (ok and math.isfinite(value))]
        if bad:
            raise ValueError(f"scanner {self.name!r}: out of range: {', '.join(bad)}")


DEFAULT = Scanner()
# Another site: noisier, coarser-grained images from a smoother kernel, 5 mm slabs, a wider field of view and a
# wider, lower brain window. Strength chosen on the demo run: a clear but partial AUC drop (docs/NOTES.md).
OTHER = Scanner(name="other-scanner", noise=2.0, grain_mm=1.5, sharpen=-0.5, slice_mm=5.0, fov_mm=250.0,
                window=(35.0, 100.0))
SCANNERS = {s.name: s for s in (DEFAULT, OTHER)}


def scan_slice(p: dict, j: int, size: int, rng: np.random.Generator,
               scanner: Scanner = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """HU image (float32) and tissue map (uint8) of slice j of patient p as `scanner` images it; the default draws
    the same noise from rng as any other, so one seed gives the same heads on every scanner."""
    hu, tissue = _slab(p, p["z"][j], size, scanner.slice_mm)
    hu = _below_bone(hu, lambda soft: ndimage.gaussian_filter(soft, p["blur"], truncate=3.0, mode="nearest"))
    if scanner.fov_mm != FOV_MM:
        hu, tissue = _zoom(hu, tissue, FOV_MM / scanner.fov_mm)
    sp = scanner.fov_mm / size
    if scanner.sharpen:
        smooth = lambda soft: ndimage.gaussian_filter(soft, KERNEL_MM / sp, truncate=3.0, mode="nearest")
        hu = _below_bone(hu, lambda soft: soft + np.float32(scanner.sharpen) * (soft - smooth(soft)))
    hu += _noise(rng, hu.shape, scanner.grain_mm / sp) * np.float32(p["noise"] * scanner.noise)
    shift = tuple(np.rint(np.asarray(p["shift_mm"]) / sp).astype(int))
    return np.roll(hu, shift, (0, 1)), np.roll(tissue, shift, (0, 1))


def _slab(p: dict, z: float, size: int, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy averaged over planes spread evenly through a slab `thickness` mm thick, with its centre plane's
    tissue map (which the bleed mask comes from)."""
    if not thickness:
        return paint_anatomy(p, z, size)
    n = 2 * math.ceil(thickness / (2 * SLAB_STEP_MM)) + 1
    planes = [paint_anatomy(p, z + dz, size) for dz in (np.arange(n) - n // 2) * (thickness / n)]
    return np.mean([hu for hu, _ in planes], axis=0, dtype=np.float32), planes[n // 2][1]


def _below_bone(hu: np.ndarray, filter_soft) -> np.ndarray:
    """filter_soft applied up to 100 HU only, or bone would lift thin layers out of range."""
    bone = np.maximum(hu - 100, 0)
    return filter_soft(hu - bone) + bone


def _zoom(hu: np.ndarray, tissue: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Both images scaled by `factor` about their centre, air where nothing was imaged."""
    centre = (np.asarray(hu.shape) - 1) / 2
    scale, offset = np.full(2, 1 / factor), centre - centre / factor   # output pixel -> the pixel it images
    return (ndimage.affine_transform(hu, scale, offset, order=1, mode="constant", cval=-1000.0),
            ndimage.affine_transform(tissue, scale, offset, order=0, mode="constant", cval=AIR))


def _noise(rng: np.random.Generator, shape, grain_px: float) -> np.ndarray:
    """Unit-variance noise, white or smoothed to a grain of `grain_px` and rescaled."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if grain_px:
        noise = ndimage.gaussian_filter(noise, grain_px, mode="wrap")
        noise /= noise.std()
    return noise
