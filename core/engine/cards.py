"""One card builder and history writer for every family; families add their own fields."""
from __future__ import annotations

import platform
import time

import numpy as np
import pandas as pd
import sklearn
import timm
import torch
import torchvision
from sklearn.metrics import log_loss

from core.engine.config import TrainConfig
from core.io import store
from core.io.imaging import WINDOW_SETS
from core.metrics.binary import CLASSES, auc_or_nan, auc_per_output, card_metrics
from core.registry import ModelSpec
from core.subtypes import SUBTYPES

SPLITS = ("train", "val", "test")


def split_parts(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """Manifest row indices of each split."""
    split = manifest["split"].to_numpy()
    return {s: np.flatnonzero(split == s) for s in SPLITS}


def dataset_facts(cfg: TrainConfig, manifest: pd.DataFrame, part: dict[str, np.ndarray]) -> dict:
    """The card's "dataset": where the data came from and images / hemorrhages per split."""
    labels = manifest["label"].to_numpy()
    return {"source": ", ".join(cfg.data) if cfg.data else "synthetic phantoms",
            "counts": {s: {"n": int(len(part[s])), "hemorrhage": int(labels[part[s]].sum())} for s in SPLITS}}


def input_windows(windows: str) -> dict:
    """A network card's window fields: the run's window set (core.io.imaging.WINDOW_SETS), one per channel."""
    names = WINDOW_SETS[windows]
    return {"window": ", ".join(names), "windows": windows,
            "channels": "grey replicated to 3" if len(names) == 1 else "one HU window per channel"}


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "scikit-learn": sklearn.__version__,
            "hemolens_schema": store.SCHEMA_VERSION}


def scan_keys(rows: pd.DataFrame, which) -> np.ndarray | None:
    """The scan (series) of each of `rows[which]` (indices or a mask) for scan-level metrics; None without one."""
    return rows["series"].to_numpy()[which] if "series" in rows else None


def model_card(spec: ModelSpec, labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], training: dict,
               dataset: dict | None, scans: np.ndarray | None = None, **fields) -> dict:
    """Every family's card: identity, metrics and thresholds, the family's `fields`, training, data, versions;
    `scans` (the test rows' scan keys, `scan_keys`) adds `metrics.test.scan`."""
    return {"model": spec.name, "display_name": spec.display_name, "family": spec.family, "reference": spec.reference,
            "classes": CLASSES, **fields,
            **card_metrics(labels["val"], probs["val"], labels["test"], probs["test"], scans),
            "training": training, "dataset": dataset, "versions": versions(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """history.csv's columns in order; a column a family has no value for is NaN."""
    return pd.DataFrame(rows).reindex(columns=store.HISTORY_COLUMNS)


def fitted_once_history(labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], seconds: float,
                        **extra) -> pd.DataFrame:
    """One history row for a model fitted in one go; `labels`/`probs` need "val" (and "train" for train columns)."""
    def loss(s):
        return float(log_loss(labels[s], probs[s], labels=[0, 1]))

    def acc(s):
        return float(np.mean((probs[s] >= 0.5) == labels[s]))

    row = {"epoch": 1, "val_loss": loss("val"), "val_acc": acc("val"), "val_auc": auc_or_nan(labels["val"], probs["val"]),
           "seconds": seconds, **extra}
    if "train" in probs:
        row.update(train_loss=loss("train"), train_acc=acc("train"))
    return history_frame([row])


def subtype_probabilities(probs: np.ndarray) -> dict[str, np.ndarray]:
    """predictions.csv's `p_<subtype>` columns from a subtypes head's (n, 5) subtype probabilities (SUBTYPES order)."""
    return {f"p_{subtype}": probs[:, i] for i, subtype in enumerate(SUBTYPES)}


def add_subtype_metrics(card: dict, targets: np.ndarray, outputs: dict[str, np.ndarray],
                        part: dict[str, np.ndarray]) -> dict:
    """metrics.{val,test}.subtypes of a subtypes head: each subtype's AUC (DeLong CI) on the rows labelled for it;
    (N, 6) targets and per-split (n, 6) outputs, both in core.subtypes.OUTPUTS order."""
    for s in ("val", "test"):
        card["metrics"][s]["subtypes"] = auc_per_output(SUBTYPES, targets[part[s], 1:], outputs[s][:, 1:])
    return card


def predictions_frame(manifest: pd.DataFrame, part: dict[str, np.ndarray], probs: dict[str, np.ndarray],
                      subtypes: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """predictions.csv: the val and test rows of the manifest with each one's probability, and with a subtypes
    head's (n, 5) `subtypes` per split each subtype's (`p_epidural` ...)."""
    return pd.concat([manifest.iloc[part[s]].assign(split=s, prob=probs[s],
                                                    **(subtype_probabilities(subtypes[s]) if subtypes else {}))
                      for s in ("val", "test")], ignore_index=True)
