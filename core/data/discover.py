"""Dataset discovery: `discover(root)` reads every folder layout users bring as one table, without decoding."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.layouts import NAMES, read_layout
from core.subtypes import ABBREVIATIONS, FLAG_COLUMNS, INTRAPARENCHYMAL, SUBTYPES

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
# Synonyms are matched after lower-casing and turning "_"/"-" into spaces.
_HEMORRHAGE_WORDS = {"hemorrhagic", "hemorrhage", "haemorrhage", "haemorrhagic", "with hemorrhage",
                     "with haemorrhage", "ich", "1", "positive", "pos", "bleed", "yes"}
_NORMAL_WORDS = {"normal", "without hemorrhage", "without haemorrhage", "no hemorrhage",
                 "no haemorrhage", "0", "negative", "neg", "healthy", "no"}
_SUBTYPE_WORDS = {**{s: s for s in SUBTYPES}, **ABBREVIATIONS, "intracerebral": INTRAPARENCHYMAL}
_SPLIT_WORDS = {"training": "train", "train": "train", "validation": "val", "val": "val", "valid": "val",
                "testing": "test", "test": "test"}
# Folders that hold something other than scans (phantom masks, previews) are never walked.
_SKIP_DIRS = {"masks", "mask", "__macosx"}
_ID_COLUMNS = ("id", "image_id", "image", "filename", "file", "name", "path", "slice")
_LABEL_COLUMNS = ("hemorrhage", "label", "any", "ich", "target", "class", "haemorrhage")
# Series naming seen in real exports: "<series>_0_<slice>", "<series>_s<slice>", "IMG-0001-00042", "p12_slice3".
_SERIES_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"^(?P<series>.+)_0_(?P<slice>\d+)$",
    r"^(?P<series>.+)[_-]s(?P<slice>\d+)$",
    r"^(?P<series>.+)[_-]slice[_-]?(?P<slice>\d+)$",
    r"^(?P<series>[a-z]+-\d+)-(?P<slice>\d{3,})$",
)]


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one readable sentence."""


def _words(name: str) -> str:
    return re.sub(r"[_\-]+", " ", name.strip().lower())


def class_of_folder(name: str) -> tuple[int, str] | None:
    """(label, subtype) for a class folder name, or None when the name is not a class."""
    w = _words(name)
    if w in _SUBTYPE_WORDS:
        return 1, _SUBTYPE_WORDS[w]
    if w in _HEMORRHAGE_WORDS:
        return 1, ""
    if w in _NORMAL_WORDS:
        return 0, ""
    return None


def split_of_folder(name: str) -> str | None:
    """'train' / 'val' / 'test' for folder names like 'Training Data', 'val', 'Test set'."""
    w = re.sub(r"\b(data|set|split|images)\b", "", _words(name)).strip()
    return _SPLIT_WORDS.get(w)


def series_of_stem(stem: str) -> tuple[str, int] | tuple[None, None]:
    """(series, slice index) when the file name follows a recognisable series naming."""
    for pattern in _SERIES_PATTERNS:
        m = pattern.match(stem)
        if m:
            return m.group("series"), int(m.group("slice"))
    return None, None


def _label_value(value) -> int | None:
    if pd.isna(value):
        return None
    w = _words(str(value))
    try:
        return int(float(w) > 0.5)
    except ValueError:
        found = class_of_folder(w)
        return None if found is None else found[0]


def _image_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        rel_dirs = p.relative_to(root).parts[:-1]
        if any(d.lower() in _SKIP_DIRS or d.startswith(".") for d in rel_dirs) or p.name.startswith("."):
            continue
        # DICOM files often have no extension at all; they are kept and sorted out by decoding.
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == ""):
            files.append(p)
    return files


def _read_labels_csv(root: Path) -> pd.DataFrame | None:
    """The first CSV under root with an id column; columns are normalised (`id, hemorrhage` works)."""
    for csv in sorted(root.rglob("*.csv")):
        table = pd.read_csv(csv, dtype=str, skipinitialspace=True)
        table.columns = [c.strip().lower() for c in table.columns]
        id_col = next((c for c in _ID_COLUMNS if c in table.columns), None)
        if id_col is None:
            continue
        table["_key"] = table[id_col].map(lambda s: Path(str(s).strip()).stem)
        return table.drop_duplicates("_key").set_index("_key")
    return None


# labels.csv columns kept in the manifest: phantoms' bleed size and difficulty, a painted slice's source file
CARRIED_COLUMNS = ("bleed_area_mm2", "difficulty", "source_sha256")


def _folder_rows(root: Path, files: list[Path]) -> list[dict]:
    """Rows for class folders, split folders and a labels CSV; files without a label are left out."""
    labels_csv = _read_labels_csv(root)
    rows = []
    for path in files:
        label, subtype, split = None, "", None
        for part in path.relative_to(root).parts[:-1]:
            split = split_of_folder(part) or split
            found = class_of_folder(part)
            if found is not None:
                label, subtype = found[0], found[1] or subtype
        extras = {}
        if labels_csv is not None and path.stem in labels_csv.index:
            extras = labels_csv.loc[path.stem].to_dict()
            if label is None:
                label = next((_label_value(extras[c]) for c in _LABEL_COLUMNS if c in extras), None)
        if label is None:
            continue
        series, slice_index = series_of_stem(path.stem)
        group = extras.get("stack_id") or extras.get("patient_id") or extras.get("series") or series
        folders = [d for d in path.relative_to(root).parts[:-1] if class_of_folder(d) is None
                   and split_of_folder(d) is None]
        stack = extras.get("stack_id") or extras.get("series") or (series and "/".join([*folders, series]))
        rows.append({"path": str(path), "id": str(path.relative_to(root).with_suffix("")),
                     "label": int(label), "subtype": extras.get("subtype") or subtype,
                     "given_split": split, "group": f"series:{group}" if group else None, "series": stack or None,
                     "slice_index": extras.get("slice_index", slice_index),
                     **{k: v for k, v in extras.items() if k in CARRIED_COLUMNS}})
    return rows


def _rows(root: Path) -> pd.DataFrame:
    """The rows of a published layout (core.data.layouts) or of class folders / a labels CSV."""
    published = read_layout(root)
    if published is not None:
        layout, table = published
        if table.empty:
            raise DatasetError(f"{root} has the {NAMES[layout]} label files, but none of the images they name "
                               "was found beside them (docs/datasets.md: the field's published datasets).")
        return table
    files = _image_files(root)
    if not files:
        raise DatasetError(f"No images (PNG, JPEG, TIFF, BMP or DICOM) were found under {root}.")
    rows = _folder_rows(root, files)
    if not rows:
        raise DatasetError(f"None of the {len(files)} images under {root} has a label: use class folders "
                           "(hemorrhage/normal) or a labels CSV with an id and a hemorrhage column.")
    return pd.DataFrame(rows)


def _named_flags(subtype: str) -> list[float]:
    """0/1 per subtype from a subtype string ("subdural", "SDH+sah"); NaN throughout when it names none, or a word
    that is no subtype ("real": a source's own bleed of unknown kind)."""
    names = [_SUBTYPE_WORDS.get(_words(part)) for part in str(subtype).split("+") if part.strip()]
    if not names or None in names:
        return [np.nan] * len(SUBTYPES)
    return [float(subtype in names) for subtype in SUBTYPES]


def subtype_flags(table: pd.DataFrame) -> pd.DataFrame:
    """FLAG_COLUMNS for discover's rows: 1 or 0 where the row tells, NaN where it does not. A published layout's
    flags are its own, other rows' come from their `subtype`; a normal is 0 throughout, a bleed naming no subtype
    is NaN throughout (unknown, never a negative)."""
    if set(FLAG_COLUMNS) <= set(table.columns):
        flags = table[FLAG_COLUMNS].astype(float)
    else:
        flags = pd.DataFrame([_named_flags(s) for s in table["subtype"]], columns=FLAG_COLUMNS, index=table.index)
    bleeds = table["label"].to_numpy() == 1
    flags.loc[bleeds & (flags.fillna(0).to_numpy().sum(axis=1) == 0)] = np.nan
    flags.loc[~bleeds] = 0.0
    return flags


def discover(root: str | Path, both_classes: bool = True) -> pd.DataFrame:
    """One row per image (path, id, label, subtype, given_split, group, series, slice_index, CSV extras); the
    field's published layouts (RSNA 2019, CQ500, PhysioNet CT-ICH: core.data.layouts) as they come, with a 0/1
    column per subtype; a folder of one class is refused unless `both_classes` is False (core.insert paints into
    normals only)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist or is not a folder.")
    table = _rows(root)
    table["subtype"] = table["subtype"].fillna("").astype(str)
    if both_classes and table["label"].nunique() < 2:
        only = "hemorrhage" if table["label"].iloc[0] == 1 else "normal"
        raise DatasetError(f"Dataset {root} holds only one class ({only}, {len(table)} images); "
                           "comparing hemorrhage against normal needs both.")
    splits = table["given_split"]
    if splits.notna().any() and splits.isna().any():
        raise DatasetError(f"Some images under {root} sit in split folders (train/val/test) and "
                           f"{int(splits.isna().sum())} do not; put every image in one or use none.")
    return table
