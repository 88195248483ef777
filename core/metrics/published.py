"""What the source studies reported (see REFERENCE.md), for labelled "published" reference rows. Each study is
cited as REFERENCE.md names it, by kind and year (it gives no authors); "A" and "B" are only keys here.

Figures are stored as fractions like every metric in core.metrics (the papers print percent).
Keys are the studies' own model names and metric words: study A says "recall" without saying
which class or average it is, so it is not relabelled as sensitivity here.
Study B also printed its confusion matrices; published_rows() recomputes its figures from them,
which exposes the slips REFERENCE.md notes (sensitivity, specificity, VGG16's F1).
"""
from __future__ import annotations

import pandas as pd

from core.metrics.binary import from_confusion, wilson_interval

PUBLISHED = {
    "A": {
        "cited_as": "undergraduate thesis, 2024",
        "about": "five CNNs, Keras transfer learning, 10 epochs",
        "test_set": {"n": 511, "normal": 194, "hemorrhage": 317},
        "models": {
            "ResNet": {"accuracy": 0.73, "precision": 0.71, "recall": 0.96, "f1": 0.82},
            "MobileNet": {"accuracy": 0.91, "precision": 0.89, "recall": 0.94, "f1": 0.88},
            "AlexNet": {"accuracy": 0.96, "precision": 0.93, "recall": 0.98, "f1": 0.95},
            "Xception": {"accuracy": 0.92, "precision": 0.90, "recall": 0.88, "f1": 0.89},
            "Inception": {"accuracy": 0.98, "precision": 0.99, "recall": 0.96, "f1": 0.98},
        },
        # The one per-class report given in full (two decimals, accuracy to four).
        "per_class": {"Inception": {"normal": {"precision": 1.00, "recall": 0.96},
                                    "hemorrhage": {"precision": 0.98, "recall": 1.00},
                                    "accuracy": 0.9843}},
    },
    "B": {
        "cited_as": "journal paper, 2025",
        "about": "MobileNet, ResNet, VGG16 and a web app",
        "test_set": {"n": 1016, "normal": 406, "hemorrhage": 610},
        "models": {
            "MobileNet": {"accuracy": 0.9951, "sensitivity": 0.918, "specificity": 0.932, "inference_ms": 12},
            "ResNet": {"accuracy": 0.9970, "sensitivity": 0.969, "specificity": 0.976, "inference_ms": 28},
            "VGG16": {"accuracy": 0.9734, "sensitivity": 0.952, "specificity": 0.959, "f1": 0.9777,
                      "inference_ms": 45},
        },
        "confusion": {
            "VGG16": {"tn": 379, "fp": 27, "fn": 0, "tp": 610},
            "ResNet": {"tn": 403, "fp": 3, "fn": 0, "tp": 610},
            "MobileNet": {"tn": 405, "fp": 1, "fn": 4, "tp": 606},
        },
    },
}

RECOMPUTED = "recomputed from the published confusion matrix"


def published_rows() -> pd.DataFrame:
    """One row per study and model as published, plus rows recomputed from any published matrix; `cited_as` names
    the study."""
    rows = [{"study": study, "cited_as": entry["cited_as"], "model": model, "figures": "published", **figures}
            for study, entry in PUBLISHED.items() for model, figures in entry["models"].items()]
    rows += [{"study": study, "cited_as": entry["cited_as"], "model": model, "figures": RECOMPUTED,
              **from_confusion(**matrix)}
             for study, entry in PUBLISHED.items() for model, matrix in entry.get("confusion", {}).items()]
    return pd.DataFrame(rows)


def ci_text(ci) -> str:
    """"0.712–0.918", or "" where the interval is undefined (NaN in memory, null in a card)."""
    return "" if ci is None or ci[0] is None or ci[0] != ci[0] else f"{ci[0]:.3f}–{ci[1]:.3f}"


def rounds_to(printed: float, computed: float) -> bool:
    """Whether a figure printed with k decimals is `computed` rounded to k decimals (0.9734 vs 989/1016)."""
    decimals = len(repr(float(printed)).split(".")[1])
    return abs(printed - computed) <= 0.5 * 10 ** -decimals + 1e-12


def confusion_check(tn: int, fp: int, fn: int, tp: int, printed: dict) -> pd.DataFrame:
    """Every metric a printed confusion matrix implies (from_confusion), Wilson intervals for the
    proportions, and whether each figure the paper printed is the matrix's, rounded."""
    counts = {"accuracy": (tp + tn, tn + fp + fn + tp), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
              "precision": (tp, tp + fp), "npv": (tn, tn + fn)}
    return pd.DataFrame([{
        "metric": key, "from the matrix": value,
        "95% CI": ci_text(wilson_interval(*counts[key])) if key in counts else "",
        "as k / n": f"{counts[key][0]} / {counts[key][1]}" if key in counts else "",
        "printed in the paper": printed.get(key),
        "matches print": rounds_to(printed[key], value) if key in printed else None,
    } for key, value in from_confusion(tn, fp, fn, tp).items()])
