"""Leak-free splits via `prepare(root, size, seed)`: series, patient and near-duplicate groups never straddle splits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import DisjointSet
from sklearn.model_selection import StratifiedGroupKFold

from core.io.atomic import atomic_write
from core.data.discover import DatasetError, discover, subtype_flags
from core.data.decode import RESIZE_POLICY, DecodedSet, decode_images
from core.subtypes import FLAG_COLUMNS

PHASH_MAX, DHASH_MAX = 8, 6  # calibrated on Kaggle's known duplicate pairs (shared/data/README.md)
MANIFEST_COLUMNS = ["path", "sha256", "label", "subtype", "group", "split"]


@dataclass
class Prepared:
    manifest: pd.DataFrame      # one row per usable image, MANIFEST_COLUMNS first, FLAG_COLUMNS (NaN: unknown) after
    images: np.ndarray          # (N, S, S) uint8, or (N, S, S, C) for C windows, aligned with manifest rows
    leakage: dict               # near-duplicates, straddling groups, skipped files
    image_size: int
    resize_policy: str = RESIZE_POLICY
    framing: str = "none"       # core.io.framing, applied before the resize
    windows: str = "brain"      # core.io.imaging.WINDOW_SETS: the HU windows, one per channel
    derived: dict = field(default_factory=dict, repr=False, compare=False)  # shared within a run (features, CAM masks)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a[:, None] ^ b[None, :])


def near_duplicate_pairs(phash: np.ndarray, dhash: np.ndarray, chunk: int = 2048) -> list[tuple[int, int, int, int]]:
    """(i, j, phash distance, dhash distance) for every pair within both bounds, i < j."""
    pairs = []
    for start in range(0, len(phash), chunk):
        dp = _hamming(phash[start:start + chunk], phash)
        dd = _hamming(dhash[start:start + chunk], dhash)
        for i, j in zip(*np.nonzero((dp <= PHASH_MAX) & (dd <= DHASH_MAX))):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(dp[i, j]), int(dd[i, j])))
    return pairs


def assign_groups(table: pd.DataFrame, pairs) -> pd.Series:
    """Union of declared groups, identical files and near-duplicates (never merging two declared groups)."""
    groups = DisjointSet(range(len(table)))
    for _, idx in table.groupby("group_hint", dropna=True).indices.items():
        for i in idx[1:]:
            groups.merge(idx[0], i)
    for _, idx in table.groupby("sha256").indices.items():
        for i in idx[1:]:
            groups.merge(idx[0], i)
    declared = table["group_hint"].notna().to_numpy()
    for i, j, _, _ in pairs:
        if not (declared[i] and declared[j]):
            groups.merge(i, j)
    ids = table["id"].to_numpy()
    return pd.Series([ids[min(groups.subset(i))] for i in range(len(table))], index=table.index)


def split_groups(labels: np.ndarray, groups: np.ndarray, seed: int, holdout: float = 0.15,
                 parts: tuple[str, ...] = ("test", "val")) -> np.ndarray:
    """Stratified group split (StratifiedGroupKFold): each of `parts` gets ~holdout of the cases, the rest train."""
    n_folds = max(2, round(1 / holdout))
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise DatasetError(f"Only {n_groups} independent groups (series/patients); a leak-free "
                           f"split needs at least {n_folds}. Provide train/val/test folders instead.")
    out = np.full(len(labels), "train", dtype=object)
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(folds.split(np.zeros(len(labels)), labels, groups)):
        if fold < len(parts):
            out[held] = parts[fold]
    return out


def leakage_report(manifest: pd.DataFrame, pairs, failed: dict[str, str]) -> dict:
    split = manifest["split"].to_numpy()
    ids = manifest["id"].to_numpy()
    dup_rows = [{"a": ids[i], "b": ids[j], "phash": dp, "dhash": dd, "split_a": split[i], "split_b": split[j]}
                for i, j, dp, dd in pairs]
    # Only a split given by the dataset's folders can straddle; ours never does (asserted in tests).
    per_group = manifest.groupby("group")["split"].nunique()
    across = [r for r in dup_rows if r["split_a"] != r["split_b"]]
    return {
        "n_images": int(len(manifest)),
        "near_duplicate_pairs": len(dup_rows),
        "near_duplicate_pairs_across_splits": len(across),
        # Pairs across splits first (only declared groups can put them there); capped to stay readable.
        "pairs": (across + [r for r in dup_rows if r["split_a"] == r["split_b"]])[:500],
        "n_groups": int(manifest["group"].nunique()),
        "largest_group": int(manifest["group"].value_counts().max()),
        "groups_straddling_splits": sorted(per_group[per_group > 1].index.tolist()),
        "skipped_unreadable": failed,
    }


def _order_dicom_series(table: pd.DataFrame, decoded: DecodedSet) -> None:
    """Number DICOM slices within their series along the slice normal, then InstanceNumber; in place."""
    dicom = pd.DataFrame({"uid": decoded.series_uid, "position": decoded.slice_position,
                          "instance": decoded.instance_number, "path": table["path"]}, dtype=object)
    dicom = dicom[dicom["uid"].notna()]
    if dicom.empty:
        return
    dicom[["position", "instance"]] = dicom[["position", "instance"]].astype(float)
    ordered = dicom.sort_values(["uid", "position", "instance", "path"], na_position="last")
    table.loc[ordered.index, "series"] = ordered["uid"]
    table.loc[ordered.index, "slice_index"] = ordered.groupby("uid").cumcount()


def _source_table(root: str | Path, size: int, seed: int, workers: int | None, framing: str, split: bool,
                  windows: str) -> tuple[pd.DataFrame, DecodedSet, list]:
    """One dataset folder decoded, grouped and split: (table, decoded, near-duplicate pairs)."""
    table = discover(root)
    table[FLAG_COLUMNS] = subtype_flags(table)
    decoded: DecodedSet = decode_images(table["path"].tolist(), size, workers, framing, windows)
    table = table[table["path"].isin(set(decoded.paths))].reset_index(drop=True)
    if table.empty:
        raise DatasetError(f"No image under {root} could be decoded; first error: "
                           f"{next(iter(decoded.failed.values()), 'none')}")
    table["sha256"] = decoded.sha256
    # The DICOM patient (PatientID, else study, hashed) is the strongest grouping evidence: RSNA 2019 names no patient
    # in its labels, and a patient's several series must share a split. The series UID next, the dataset's own last.
    table["group_hint"] = [f"patient:{key}" if key else f"series:{uid}" if uid else g
                           for key, uid, g in zip(decoded.patient_key, decoded.series_uid, table["group"])]
    _order_dicom_series(table, decoded)
    pairs = near_duplicate_pairs(decoded.phash, decoded.dhash)
    table["group"] = assign_groups(table, pairs)
    if not split:
        table["split"] = "external"
    elif table["given_split"].notna().all():
        table["split"] = table["given_split"]
        if not (table["split"] == "val").any():   # train/test only: carve validation out of train
            train = table["split"] == "train"
            table.loc[train, "split"] = split_groups(table.loc[train, "label"].to_numpy(),
                                                     table.loc[train, "group"].to_numpy(), seed, parts=("val",))
    else:
        table["split"] = split_groups(table["label"].to_numpy(), table["group"].to_numpy(), seed)
    return table, decoded, pairs


def source_names(roots: list[str | Path]) -> list[str]:
    """A short name per pooled folder (its own name, numbered where two share one): ids and groups are prefixed
    with it, so two sources' files never share an id or a group."""
    names = [Path(r).expanduser().resolve().name for r in roots]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def _pooled(parts: list[tuple[pd.DataFrame, DecodedSet, list]], names: list[str]):
    """Several sources' tables as one: ids and groups prefixed with the source, a `dataset` column, pairs offset."""
    tables, pairs, failed, offset = [], [], {}, 0
    for name, (table, decoded, source_pairs) in zip(names, parts):
        tables.append(table.assign(dataset=name, id=name + "/" + table["id"].astype(str),
                                   group=name + "/" + table["group"].astype(str)))
        pairs += [(i + offset, j + offset, dp, dd) for i, j, dp, dd in source_pairs]
        failed.update(decoded.failed)
        offset += len(table)
    return pd.concat(tables, ignore_index=True), np.concatenate([d.images for _, d, _ in parts]), pairs, failed


def prepare(root: str | Path | list, size: int, seed: int = 0, workers: int | None = None, framing: str = "none",
            split: bool = True, windows: str = "brain") -> Prepared:
    """The decoded, grouped and split dataset; `split=False` (an external set, all of it evaluated): every case
    in split "external", however few or unbalanced its groups. Several folders are pooled: each is grouped and
    split on its own (its given split honoured), so no group spans two sources."""
    roots = list(root) if isinstance(root, (list, tuple)) else [root]
    parts = [_source_table(r, size, seed, workers, framing, split, windows) for r in roots]
    if len(parts) == 1:
        (table, decoded, pairs), images, failed = parts[0], parts[0][1].images, parts[0][1].failed
    else:
        table, images, pairs, failed = _pooled(parts, source_names(roots))
    for part in ("train", "val", "test") if split else ():
        labels = table.loc[table["split"] == part, "label"]
        if labels.nunique() < 2:
            raise DatasetError(f"The {part} split has {len(labels)} images of one class only; "
                               "add images or provide a balanced split.")
    extras = [c for c in table.columns if c not in MANIFEST_COLUMNS + ["given_split", "group_hint"]]
    manifest = table[MANIFEST_COLUMNS + extras]
    return Prepared(manifest, images, leakage_report(manifest, pairs, failed), size, framing=framing,
                    windows=windows)


def subtype_targets(manifest: pd.DataFrame) -> np.ndarray:
    """(N, 6) targets of a subtypes head, core.subtypes.OUTPUTS: the label, then each subtype's flag, NaN where
    the row does not tell. DatasetError when no row names a subtype: such a head would learn nothing but "any"."""
    flags = manifest.reindex(columns=FLAG_COLUMNS).to_numpy(dtype=float)
    if not (flags == 1).any():
        bleeds = int(manifest["label"].sum())
        raise DatasetError(f"--subtypes needs hemorrhage subtype labels, and none of the {bleeds} hemorrhage images "
                           "here names one (subtype folders, a subtype column in the labels CSV, "
                           "or RSNA 2019 / CQ500 / PhysioNet CT-ICH as they come).")
    return np.column_stack([manifest["label"].to_numpy(dtype=float), flags])


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    atomic_write(path, manifest.to_csv(index=False))


def seen_in_training(manifest: pd.DataFrame) -> set[str]:
    """The sha256 of every file a run trained or chose its thresholds on (its train and val rows), and of the source
    files their painted copies were made from (core.insert's `source_sha256`)."""
    seen = manifest[manifest["split"] != "test"]
    sources = seen["source_sha256"].dropna() if "source_sha256" in seen else []
    return set(seen["sha256"]) | set(sources)


def read_manifest(path: str | Path) -> pd.DataFrame:
    manifest = pd.read_csv(path, dtype={"subtype": str, "group": str, "id": str, "series": str})
    manifest["subtype"] = manifest["subtype"].fillna("")
    return manifest
