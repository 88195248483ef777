"""A painted dataset: every real normal slice of a folder, re-encoded, beside copies of it with a bleed painted in.

Layout (the phantom layout, under the source's own split folders when it has them):
OUT/[train|val|test/]{normal,hemorrhage,masks}/<id>.png (DICOM sources: .dcm, in HU) and OUT/labels.csv with
id, label, subtype, bleed_area_mm2, difficulty, blood_hu, source, patient_id, pixel_spacing_mm. A normal and its
copies share patient_id, the source's own group (series, near-duplicates), so they never straddle splits.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from tqdm import tqdm

from core.data.decode import decode_images, framed_square
from core.data.discover import DatasetError, discover
from core.data.splits import assign_groups, near_duplicate_pairs
from core.insert.anatomy import read_anatomy
from core.insert.lesions import paint_bleed
from core.io.atomic import atomic_write
from core.io.imaging import ScanError, load_scan
from core.phantom.generate import write_png
from core.subtypes import SUBTYPES

# source_sha256: the source file's, so an evaluation on the source folder drops what a run trained on in any form
LABEL_COLUMNS = ["id", "label", "subtype", "bleed_area_mm2", "difficulty", "blood_hu", "source", "patient_id",
                 "pixel_spacing_mm", "source_sha256"]


def source_slices(root: Path, real_bleeds: bool = False) -> pd.DataFrame:
    """The normal slices of a dataset folder (and its hemorrhage slices with `real_bleeds`) with their groups: the
    folder's own (series) merged with near-duplicates, as core.data.splits groups them."""
    table = discover(root, both_classes=False)
    table = table[(table["label"] == 0) | real_bleeds].reset_index(drop=True)
    if not (table["label"] == 0).any():
        raise DatasetError(f"{root} holds no normal slice to paint into.")
    decoded = decode_images(table["path"].tolist(), 64)
    table = table[table["path"].isin(set(decoded.paths))].reset_index(drop=True)
    table["sha256"], table["group_hint"] = decoded.sha256, table["group"]
    table["group"] = assign_groups(table, near_duplicate_pairs(decoded.phash, decoded.dhash))
    return table


def _safe_id(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", source_id).strip("_") or "slice"


def _write_dicom(path: Path, hu: np.ndarray, spacing_mm: float, key: str) -> None:
    """A minimal CT slice in HU with no patient tags at all; UIDs derived from `key`, so reruns are identical."""
    meta = FileMetaDataset()
    uid = generate_uid(entropy_srcs=[key])
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta, CTImageStorage, uid, "CT"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleIntercept, ds.RescaleSlope, ds.PixelSpacing = -1024, 1, [spacing_mm, spacing_mm]
    ds.PixelData = (np.clip(np.rint(hu) + 1024, -32768, 32767)).astype(np.int16).tobytes()
    tmp = path.with_name(f".{path.name}.partial")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def _values(path: str):
    """(values to paint into: HU or uint8 grey, is_hu, pixel spacing or None)."""
    scan = load_scan(path)
    if scan.is_hu:
        return scan.pixels.astype(np.float32), True, (scan.pixel_spacing or (None, None))[1]
    return scan.image, False, None


def _paint_copies(values, is_hu, spacing, n_copies: int, rng, difficulty, subtypes, first: int) -> list:
    """n_copies painted versions of one slice, cycling the subtypes from `first`; a subtype that does not fit
    (no ventricle, no sulci) gives way to the next."""
    anatomy = read_anatomy(values, is_hu, spacing) if n_copies else None
    if anatomy is None:
        return []
    copies = []
    for c in range(n_copies):
        d = float(rng.uniform(*difficulty))
        for k in range(len(subtypes)):
            painted = paint_bleed(anatomy, values, subtypes[(first + c + k) % len(subtypes)], rng, d)
            if painted is not None:
                copies.append((painted, d, anatomy.spacing_mm))
                break
    return copies


def copies_per_normal(n_normals: int, n: int) -> list[int]:
    """n painted slices spread over the normals, round robin: the first n % N normals get one more."""
    return [n // n_normals + (i < n % n_normals) for i in range(n_normals)]


def write_painted(normals: str | Path, out: str | Path, n: int | None = None, seed: int = 0,
                  difficulty=(0.0, 1.0), subtypes=SUBTYPES, copies: int = 1, real_bleeds: bool = False) -> pd.DataFrame:
    """Write the painted dataset (module docstring) from the normal slices under `normals`; n painted slices
    (default: `copies` per normal); with `real_bleeds`, the folder's own hemorrhage slices too. Each slice draws
    from its own seed, so the files do not depend on the order."""
    table, out = source_slices(Path(normals), real_bleeds), Path(out)
    normal = (table["label"] == 0).to_numpy()
    counts = np.zeros(len(table), int)
    counts[normal] = copies_per_normal(int(normal.sum()), copies * int(normal.sum()) if n is None else n)
    rows = []
    for i, row in tqdm(list(table.iterrows()), desc="painting", unit="slice", leave=False):
        try:
            values, is_hu, spacing = _values(row["path"])
        except ScanError:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        folder = out / row["given_split"] if isinstance(row["given_split"], str) else out   # train / val / test
        base = _safe_id(row["id"])
        painted_copies = _paint_copies(values, is_hu, spacing, counts[i], rng, difficulty, tuple(subtypes), i)
        kind = "normal" if normal[i] else "hemorrhage"
        rows.append(_write_slice(folder, kind, base, values, None, is_hu, spacing or 0.0, row))
        for c, (painted, d, sp) in enumerate(painted_copies):
            rows.append(_write_slice(folder, "hemorrhage", f"{base}_b{c}", painted.values, painted, is_hu, sp,
                                     row, d))
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    atomic_write(out / "labels.csv", labels.to_csv(index=False))
    return labels


def _write_slice(folder: Path, kind: str, slice_id: str, values, painted, is_hu: bool, spacing: float, source,
                 difficulty: float | None = None) -> tuple:
    """One file (and its mask for a painted slice); its labels.csv row."""
    for sub in ("normal", "hemorrhage", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if is_hu:
        _write_dicom(folder / kind / f"{slice_id}.dcm", values, spacing, f"{source['sha256']}/{slice_id}")
    else:
        write_png(folder / kind / f"{slice_id}.png", values)
    if painted is not None:
        write_png(folder / "masks" / f"{slice_id}.png", painted.mask.astype(np.uint8) * 255)
    real = "" if kind == "normal" else (source.get("subtype") or "real")   # the source's own bleed, unpainted
    return (slice_id, int(kind == "hemorrhage"), painted.subtype if painted else real,
            round(painted.area_mm2, 2) if painted else 0.0, round(difficulty, 4) if painted else "",
            round(painted.blood_hu, 1) if painted else "", source["id"], f"src:{source['group']}", round(spacing, 4),
            source["sha256"])


def write_grid(painted: str | Path, path: str | Path, tile: int = 256) -> None:
    """A look test: one row per subtype (the first painted slice of each in labels.csv), each panel framed to the
    head: the real normal slice, its painted copy, and the copy with its mask outlined in green."""
    painted = Path(painted)
    labels = pd.read_csv(painted / "labels.csv", dtype={"id": str})
    rows = []
    for subtype in SUBTYPES:
        chosen = labels[labels["subtype"] == subtype].head(1)
        if chosen.empty:
            continue
        slice_id = chosen["id"].iloc[0]
        files = {kind: next(painted.rglob(f"{kind}/{name}.*")) for kind, name in
                 (("normal", slice_id.rsplit("_b", 1)[0]), ("hemorrhage", slice_id), ("masks", slice_id))}
        normal, bleed = (load_scan(files[k]).image for k in ("normal", "hemorrhage"))
        normal = framed_square(normal, tile, "head")[0]
        bleed, mask = framed_square(bleed, tile, "head", load_scan(files["masks"]).image > 127)
        panels = [np.repeat(grey[..., None], 3, axis=2) for grey in (normal, bleed, bleed)]
        panels[2][mask & ~ndimage.binary_erosion(mask)] = (0, 255, 0)
        rows.append(np.concatenate(panels, axis=1))
    write_png(Path(path), np.concatenate(rows, axis=0))
