"""One axial slice of a NIfTI volume, addressed as a path: `.../ct_scans/049.nii#z=12`.

The pipeline decodes one path per slice (manifest rows, split.csv, the dashboard's case reader), so a slice of a
volume is named by the volume's path and `#z=` its index along the volume's last axis, from 0, as stored (never
reordered: PhysioNet CT-ICH's SliceNumber is z + 1). `core.io.imaging.load_scan` reads such a path."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

VOLUME_SUFFIXES = (".nii", ".nii.gz")
_SLICE = re.compile(r"^(?P<volume>.+\.nii(?:\.gz)?)#z=(?P<z>\d+)$", re.IGNORECASE)


def slice_path(volume: str | os.PathLike, z: int) -> str:
    """The path naming slice z (0-based, the volume's last axis) of a NIfTI volume."""
    return f"{volume}#z={int(z)}"


def parse_slice_path(path) -> tuple[Path, int] | None:
    """(volume, z) for a slice path, None for any other path (or bytes, or a file object)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    m = _SLICE.match(os.fspath(path))
    return (Path(m.group("volume")), int(m.group("z"))) if m else None


def mask_slice_path(path: str) -> str | None:
    """The same slice of the bleed mask volume (`masks/` beside `ct_scans/`, CT-ICH's layout), when there is one."""
    address = parse_slice_path(path)
    if address is None:
        return None
    mask = address[0].parent.parent / "masks" / address[0].name
    return slice_path(mask, address[1]) if mask.is_file() else None


def _viewing_axes(affine: np.ndarray) -> tuple[int, int, bool, bool]:
    """(row axis, column axis, flip rows, flip columns) of a slice's two in-plane voxel axes so that it shows as
    radiologists view an axial slice: anterior at the top, the patient's right on the image's left."""
    import nibabel as nib  # imported on first use: only NIfTI slices need it

    ornt = nib.orientations.io_orientation(affine)   # per voxel axis: (world axis, +1 towards R / A / S)
    world = ornt[:2, 0].astype(int).tolist()
    if sorted(world) != [0, 1]:                      # not an axial volume: rows along the second voxel axis
        return 1, 0, False, False
    col = world.index(0)
    row = 1 - col
    return row, col, bool(ornt[row, 1] > 0), bool(ornt[col, 1] > 0)


def read_volume_slice(volume: Path, z: int) -> tuple[np.ndarray, tuple[float, float], float]:
    """(values of slice z as float32, scaled as stored (HU for CT), oriented for viewing; pixel spacing (row, col)
    in mm; the slice's position along the volume's slice normal in mm). Raises ValueError or OSError."""
    import nibabel as nib

    image = nib.load(volume)   # header only; an uncompressed volume is memory-mapped
    if len(image.shape) != 3:
        raise ValueError(f"'{volume.name}' holds a {len(image.shape)}-D image; a slice needs a 3-D volume")
    if not 0 <= z < image.shape[2]:
        raise ValueError(f"z={z} is out of range: '{volume.name}' has {image.shape[2]} slices")
    values = np.asarray(image.dataobj[:, :, z], dtype=np.float32)   # the proxy applies scl_slope / scl_inter
    row, col, flip_rows, flip_cols = _viewing_axes(image.affine)
    values = values.T if row == 1 else values
    values = values[::-1] if flip_rows else values
    values = values[:, ::-1] if flip_cols else values
    zooms = image.header.get_zooms()
    normal = image.affine[:3, 2] / (np.linalg.norm(image.affine[:3, 2]) or 1.0)
    position = float(normal @ (image.affine[:3, :3] @ np.array([0.0, 0.0, z]) + image.affine[:3, 3]))
    return np.ascontiguousarray(values), (float(zooms[row]), float(zooms[col])), position
