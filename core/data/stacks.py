"""Stacks of adjacent slices for sequence models: rows of K indices into the decoded slices."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.discover import series_of_stem


def stack_indices(manifest: pd.DataFrame, k: int) -> np.ndarray:
    """(N, k) row indices: each row's k series neighbours, itself at k // 2, edges repeated, within one split."""
    if k < 1:
        raise ValueError(f"stack size must be >= 1, got {k}")
    n = len(manifest)
    stacks = np.repeat(np.arange(n)[:, None], k, axis=1)
    if "series" not in manifest.columns:
        return stacks
    rows = pd.DataFrame({"series": manifest["series"].to_numpy(), "row": np.arange(n),
                         "slice": pd.to_numeric(manifest.get("slice_index"), errors="coerce")
                         if "slice_index" in manifest.columns else np.nan})
    keys = ["series"]
    if "split" in manifest.columns:
        rows["split"], keys = manifest["split"].to_numpy(), ["series", "split"]
    rows = rows[rows["series"].notna()].sort_values(["slice", "row"], na_position="last", kind="stable")
    offsets = np.arange(k) - k // 2
    for members in rows.groupby(keys, sort=False)["row"]:
        members = members[1].to_numpy()                          # this series' rows in slice order
        at = np.clip(np.arange(len(members))[:, None] + offsets, 0, len(members) - 1)
        stacks[members] = members[at]
    return stacks


def slice_order(scans: list, names: list[str]) -> list[int]:
    """Order of uploaded slices of one series: normal position, InstanceNumber, file-name number, name."""
    def key(i):
        stem = Path(names[i]).stem
        number = series_of_stem(stem)[1]
        if number is None:
            digits = re.findall(r"\d+", stem)
            number = int(digits[-1]) if digits else None
        scan = scans[i]
        return (scan.slice_position is None, scan.slice_position or 0.0,
                scan.instance_number is None, scan.instance_number or 0,
                number is None, number or 0, names[i])

    return sorted(range(len(scans)), key=key)
