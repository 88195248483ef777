"""Localization truth: where the bleed is on a dataset's slices, for core.explain's pointing game on real data.

A slice's bleed mask comes from its dataset: the phantom and painted sets' `masks/<stem>.png` beside the class
folders, the same slice of PhysioNet CT-ICH's `masks/` volume (core.io.volume.mask_slice_path), or BHX boxes
(core.data.layouts.read_bhx) joined to CQ500 slices by their DICOM SOPInstanceUID. A mask is framed, padded and
resized together with its slice (core.data.decode.framed_square): it covers the pixels the model is shown."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError

from core.data.decode import framed_square
from core.data.discover import DatasetError, discover
from core.data.layouts import BHX_FILES, box_mask, read_bhx
from core.io.imaging import ScanError, load_scan, load_scan_with_digest
from core.io.volume import mask_slice_path, parse_slice_path


@dataclass
class MaskedSlices:
    images: list[np.ndarray]            # (size, size) uint8, framed and resized as a run's slices are
    masks: list[np.ndarray]             # bool, aligned with `images`, never empty
    rows: pd.DataFrame                  # discover's row of each slice plus `truth`: "mask" or "bhx"
    skipped: dict[str, int] = field(default_factory=dict)   # why candidates were left out, how many


def mask_file(path: str) -> str | None:
    """Where a slice's bleed mask is stored: the same slice of a `masks/` volume beside `ct_scans/`, or
    `masks/<stem>.png` beside the class folder; None when its dataset has none."""
    volume = mask_slice_path(path)
    png = Path(path).parents[1] / "masks" / f"{Path(path).stem}.png"
    return volume if volume is not None else str(png) if png.is_file() else None


def bleed_mask(path: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """A slice's stored bleed mask (mask_file) when it has one of `shape`, else None."""
    found = mask_file(path)
    mask = None if found is None else load_scan(found).pixels > 0.5   # 0/1 volumes; 0/255 PNGs read as 0-1
    return mask if mask is not None and mask.shape == shape else None


def stored_masks(paths: list[str], size: int, framing: str = "none") -> dict[int, np.ndarray]:
    """Index -> the stored bleed mask (mask_file) of each of `paths` that has a non-empty one, framed and resized
    with its slice to `size` (framed_square); slices without one, or unreadable, are left out."""
    found = {}
    for i, path in enumerate(paths):
        if mask_file(path) is None:
            continue
        try:
            image = load_scan(path).image
        except (ScanError, OSError):
            continue
        mask = bleed_mask(path, image.shape[:2])
        mask = None if mask is None else framed_square(image, size, framing, mask)[1]
        if mask is not None and mask.any():
            found[i] = mask
    return found


def bhx_files(root: str | Path) -> list[Path]:
    """The BHX box CSVs (core.data.layouts.BHX_FILES) kept in a dataset's top folder, such as CQ500's."""
    return [Path(root) / name for name in BHX_FILES if (Path(root) / name).is_file()]


def sop_instance_uid(path: str) -> str | None:
    """A DICOM file's SOPInstanceUID, read from its header alone; None for any other file."""
    if parse_slice_path(path) is not None:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (InvalidDicomError, OSError):
        return None
    uid = ds.get("SOPInstanceUID")
    return str(uid).strip() if uid else None


def boxes_by_slice(files: list[Path]) -> dict[str, pd.DataFrame]:
    """SOPInstanceUID -> that slice's boxes, from every BHX CSV (read_bhx); a file that is not one is a
    DatasetError."""
    tables = []
    for csv in files:
        try:
            tables.append(read_bhx(csv))
        except (KeyError, ValueError, OSError, pd.errors.ParserError) as err:
            raise DatasetError(f"{csv} is not a BHX box CSV (SOPInstanceUID, data, labelName columns): {err}") from err
    return dict(tuple(pd.concat(tables).groupby("SOPInstanceUID"))) if tables else {}


def candidates(root: str | Path, boxes: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """discover's hemorrhage rows that have localization truth, with `truth`: "bhx" (boxes of the slice's
    SOPInstanceUID, in `sop_uid`) or "mask" (a stored mask, mask_file)."""
    rows = discover(root, both_classes=False)
    rows = rows[rows["label"] == 1].reset_index(drop=True)
    rows["sop_uid"] = [sop_instance_uid(p) for p in rows["path"]] if boxes else None
    rows["truth"] = ["bhx" if uid in boxes else "mask" if mask_file(p) else None
                     for uid, p in zip(rows["sop_uid"], rows["path"])]
    return rows[rows["truth"].notna()].reset_index(drop=True)


def masked_slices(root: str | Path, size: int, framing: str = "none", bhx: list[Path] | None = None,
                  seen: set[str] = frozenset(), limit: int | None = None, seed: int = 0,
                  windows: str = "brain") -> MaskedSlices:
    """The hemorrhage slices of a dataset with a non-empty mask (BHX boxes from `bhx`, default bhx_files(root)),
    decoded at `size` with their masks; slices whose sha256 is in `seen` (a run's train and val files) are
    dropped. `limit`: at most that many, drawn at random (seeded), else all in path order. `windows`: the run's
    (core.io.imaging.WINDOW_SETS)."""
    boxes = boxes_by_slice(bhx_files(root) if bhx is None else bhx)
    table = candidates(root, boxes)
    order = np.random.default_rng(seed).permutation(len(table)) if limit else np.arange(len(table))
    images, masks, kept = [], [], []
    skipped = {"seen_in_training": 0, "unreadable": 0, "empty_mask": 0}
    for i in order:
        if limit and len(kept) == limit:
            break
        row = table.iloc[i]
        try:
            scan, digest = load_scan_with_digest(row["path"], windows)
        except (ScanError, OSError):
            skipped["unreadable"] += 1
            continue
        if digest in seen:
            skipped["seen_in_training"] += 1
            continue
        shape = scan.image.shape[:2]
        mask = box_mask(boxes[row["sop_uid"]], shape) if row["truth"] == "bhx" else bleed_mask(row["path"], shape)
        image, mask = framed_square(scan.image, size, framing, np.zeros(shape, bool) if mask is None else mask)
        if not mask.any():
            skipped["empty_mask"] += 1
            continue
        images.append(image)
        masks.append(mask)
        kept.append(i)
    return MaskedSlices(images, masks, table.iloc[kept].drop(columns="sop_uid").reset_index(drop=True), skipped)
