"""Stacks of adjacent slices for sequence models: index rows into the decoded slices.

A slice is a row of one index, a stack a row of K, so the training engine serves CNNs and sequence
models alike. A slice whose series is unknown is a stack of itself repeated.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.discover import series_of_stem


def stack_indices(manifest: pd.DataFrame, k: int) -> np.ndarray:
    """(N, k) manifest row indices: for each row, the k slices of its series around it in slice order
    (`series`, `slice_index` columns), the row itself at k // 2, edge slices repeated at the ends.

    A row without a series (or a manifest without the columns) is a stack of itself repeated. Where
    the manifest has a `split`, a series is cut at split boundaries (a dataset's own split folders
    may cut one; our splits never do), so a stack never mixes splits."""
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
    """Indices that put several uploaded slices of one series in order: DICOM position along the
    slice normal, then InstanceNumber, then the slice number in the file name (core.data naming,
    else its last number), then the name."""
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
