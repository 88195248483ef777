"""The field's published datasets, read as they come: RSNA 2019, CQ500 and PhysioNet CT-ICH; BHX boxes as masks.

`detect(root)` names a folder's layout from its own files; `read_layout(root)` returns discover's rows for it: path,
id, label, subtype, given_split, group, series, slice_index, and one 0/1 column per subtype (core.subtypes'
FLAG_COLUMNS) for a multi-label head. `subtype` is every positive subtype joined with "+" in alphabetical order
(RSNA's): "subarachnoid+subdural"; "" for normals."""
from __future__ import annotations

import ast
import csv
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.io.volume import VOLUME_SUFFIXES, slice_path
from core.subtypes import ABBREVIATIONS, FLAG_COLUMNS, SUBTYPES, flag_column

COLUMNS = ["path", "id", "label", "subtype", "given_split", "group", "series", "slice_index"]
NAMES = {"rsna": "RSNA 2019", "cq500": "CQ500", "ct_ich": "PhysioNet CT-ICH"}
_CQ500_FINDINGS = {"ICH": "any", **{code.upper(): subtype for code, subtype in ABBREVIATIONS.items()}}
_CQ500_FOLDER = re.compile(r"^CQ500CT(\d+) CQ500CT\1$", re.IGNORECASE)
_CT_ICH_CSV = "hemorrhage_diagnosis_raw_ct.csv"
BHX_FILES = ("1_Initial_Manual_Labeling.csv", "2_Extrapolation_to_All_Series.csv",
             "3_Extrapolation_to_Selected_Series.csv")


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def _rsna_csv(root: Path) -> Path | None:
    return next((p for p in sorted(root.glob("stage_*_train.csv")) if _header(p) == ["ID", "Label"]), None)


def detect(root: Path) -> str | None:
    """'rsna', 'cq500', 'ct_ich' or None (any other folder: class folders, a labels CSV, plain DICOM)."""
    if _rsna_csv(root) is not None:
        return "rsna"
    if (root / "reads.csv").is_file() and {"name", "R1:ICH"} <= set(_header(root / "reads.csv")):
        return "cq500"
    if (root / _CT_ICH_CSV).is_file() and (root / "ct_scans").is_dir():
        return "ct_ich"
    return None


def read_layout(root: Path) -> tuple[str, pd.DataFrame] | None:
    """(layout, its rows) for a published layout, None for any other folder."""
    layout = detect(root)
    return None if layout is None else (layout, READERS[layout](root))


def _finish(table: pd.DataFrame) -> pd.DataFrame:
    """Discover's columns from path, id, label, group, series, slice_index and the flags."""
    table = table.reset_index(drop=True)
    flags = table[FLAG_COLUMNS].astype(int)
    names = ["+".join(sorted(s for s, on in zip(SUBTYPES, row) if on)) for row in flags.to_numpy()]
    table["subtype"] = [n if label == 1 else "" for n, label in zip(names, table["label"])]
    table["given_split"] = None
    return table.assign(**flags)[COLUMNS + FLAG_COLUMNS]


def read_rsna(root: Path) -> pd.DataFrame:
    """stage_2_train.csv (six rows `ID_<sop>_<finding>, Label` per image; repeated rows dropped) and the images in
    stage_2_train/ (or stage_2_train_images/). No patient is named: prepare groups by the DICOM PatientID."""
    labels_csv = _rsna_csv(root)
    labels = pd.read_csv(labels_csv, dtype={"ID": str}).drop_duplicates("ID")
    parts = labels["ID"].str.rsplit("_", n=1, expand=True)
    wide = labels.assign(image=parts[0], finding=parts[1]).pivot(index="image", columns="finding", values="Label")
    wide = wide.reindex(columns=["any", *SUBTYPES]).fillna(0).astype(int)
    folder = next((f for f in (root / labels_csv.stem, root / f"{labels_csv.stem}_images") if f.is_dir()), None)
    files = {} if folder is None else {Path(e.name).stem: e.path for e in os.scandir(folder)
                                       if e.name.lower().endswith(".dcm")}
    wide = wide[wide.index.isin(files.keys())]
    table = pd.DataFrame({"path": [files[i] for i in wide.index],
                          "id": [f"{folder.name}/{i}" for i in wide.index],
                          "label": wide["any"].to_numpy(), "group": None, "series": None, "slice_index": None,
                          **{flag_column(s): wide[s].to_numpy() for s in SUBTYPES}})
    return _finish(table)


def cq500_series(names: list[str]) -> str | None:
    """The series to read of one CQ500 patient: plain (non-contrast, non-bone), about 5 mm rather than thin; None
    when there is none. 'CT PRE CONTRAST 5MM' is plain; 'CT POST CONTRAST' and 'CT BONE' are not."""
    def plain(name: str) -> bool:
        u = name.upper()
        return not ("BONE" in u or "POST" in u or ("CONTRAST" in u and "PRE" not in u))

    def preference(name: str):
        u = name.upper()
        mm = re.search(r"(\d+(?:\.\d+)?)\s*MM", u)
        thickness = float(mm.group(1)) if mm else 5.0   # 'CT Plain' is the 5 mm reconstruction
        return "THIN" in u or thickness < 3, abs(thickness - 5.0), "PLAIN" not in u, name

    return min(filter(plain, names), key=preference, default=None)


def _majority(reads: pd.DataFrame, finding: str) -> pd.Series:
    """1 where at least two of the three readers marked the finding."""
    votes = reads[[f"R{r}:{finding}" for r in (1, 2, 3)]].apply(pd.to_numeric, errors="coerce").fillna(0)
    return (votes.sum(axis=1) >= 2).astype(int)


def read_cq500(root: Path) -> pd.DataFrame:
    """reads.csv (three readers; a finding is present on a majority) and `CQ500CT<n> CQ500CT<n>/<study>/<series>/`:
    one plain series per patient, every slice labelled as its scan; the patient is the group."""
    reads = pd.read_csv(root / "reads.csv", dtype=str)
    reads = reads.assign(name=reads["name"].str.strip()).drop_duplicates("name").set_index("name")
    found = pd.DataFrame({flag: _majority(reads, code) for code, flag in _CQ500_FINDINGS.items()})
    rows = []
    for folder in sorted({d for pattern in ("*", "*/*") for d in root.glob(pattern)
                          if d.is_dir() and _CQ500_FOLDER.match(d.name)}):
        name = f"CQ500-CT-{int(_CQ500_FOLDER.match(folder.name).group(1))}"
        series = {d.name: d for d in sorted(folder.glob("*/*")) if d.is_dir()}
        chosen = cq500_series(list(series))
        if name not in found.index or chosen is None:
            continue
        scan = found.loc[name]
        for path in sorted(p for p in series[chosen].iterdir() if p.suffix.lower() == ".dcm"):
            rows.append({"path": str(path), "id": str(path.relative_to(root).with_suffix("")),
                         "label": int(scan["any"]), "group": f"patient:{name}", "series": f"{name}/{chosen}",
                         "slice_index": None, **{flag_column(s): int(scan[s]) for s in SUBTYPES}})
    return _finish(pd.DataFrame(rows, columns=["path", "id", "label", "group", "series", "slice_index",
                                               *FLAG_COLUMNS]))


def read_ct_ich(root: Path) -> pd.DataFrame:
    """hemorrhage_diagnosis_raw_ct.csv (one row per slice; SliceNumber from 1 along the volume's last axis) and
    ct_scans/NNN.nii: each row is the slice path `ct_scans/NNN.nii#z=<SliceNumber - 1>` (core.io.volume)."""
    table = pd.read_csv(root / _CT_ICH_CSV)
    table.columns = [c.strip() for c in table.columns]
    volumes = {int(p.name.split(".")[0]): p for p in sorted((root / "ct_scans").iterdir())
               if p.name.lower().endswith(VOLUME_SUFFIXES) and p.name.split(".")[0].isdigit()}
    table = table[table["PatientNumber"].isin(volumes.keys())].reset_index(drop=True)
    z = table["SliceNumber"].astype(int) - 1
    stems = [volumes[p].name.split(".")[0] for p in table["PatientNumber"]]
    columns = {subtype.capitalize(): subtype for subtype in SUBTYPES}   # "Epidural" ...
    return _finish(pd.DataFrame({
        "path": [slice_path(volumes[p], k) for p, k in zip(table["PatientNumber"], z)],
        "id": [f"ct_scans/{s}#z={k}" for s, k in zip(stems, z)],
        "label": 1 - table["No_Hemorrhage"].astype(int), "group": [f"patient:{s}" for s in stems],
        "series": [f"ct_scans/{s}" for s in stems], "slice_index": z,
        **{flag_column(subtype): table[column].astype(int) for column, subtype in columns.items()}}))


READERS = {"rsna": read_rsna, "cq500": read_cq500, "ct_ich": read_ct_ich}


def _box(text) -> tuple[float, float, float, float] | None:
    """(x, y, width, height) in pixels from BHX's `data` cell, a Python dict literal (never evaluated as code)."""
    try:
        value = ast.literal_eval(str(text))
        return tuple(float(value[k]) for k in ("x", "y", "width", "height"))
    except (ValueError, SyntaxError, TypeError, KeyError):
        return None


def read_bhx(path: str | Path) -> pd.DataFrame:
    """One row per box of a BHX CSV: SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, label, x, y, width,
    height (pixels); rows without a box are dropped. Join to CQ500 slices by SOPInstanceUID."""
    table = pd.read_csv(path, dtype=str)
    boxes = table["data"].map(_box)
    table = table[boxes.notna()].assign(label=table["labelName"].str.strip())
    coords = pd.DataFrame(boxes.dropna().tolist(), index=table.index, columns=["x", "y", "width", "height"])
    return pd.concat([table[["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "label"]], coords],
                     axis=1).reset_index(drop=True)


def box_mask(boxes: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """The union of one slice's boxes (columns x, y, width, height in pixels) as a boolean mask of `shape`; every
    pixel a box touches is in."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes[["x", "y", "width", "height"]].to_numpy(dtype=float):
        top, left = max(0, math.floor(y)), max(0, math.floor(x))
        mask[top:max(top, math.ceil(y + h)), left:max(left, math.ceil(x + w))] = True
    return mask
