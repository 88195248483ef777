"""Binary metrics, prob = P(hemorrhage) >= threshold is positive; NaN where undefined, empty input raises ValueError."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import (average_precision_score, brier_score_loss, classification_report,
                             precision_recall_curve, roc_auc_score, roc_curve)

from core.metrics.stats import bootstrap_ci, check_labels, check_scores, delong_auc, delong_test, mcnemar_test, wilson_interval

__all__ = ["from_confusion", "binary_metrics", "choose_thresholds", "ppv_npv_at_prevalence", "reliability_bins",
           "per_class_report", "roc_points", "pr_points", "wilson_interval", "delong_auc", "delong_test",
           "mcnemar_test", "bootstrap_ci", "scan_scores", "scan_metrics", "auc_per_output", "sensitivity_by_subtype",
           "CLASSES"]

CLASSES = ["normal", "hemorrhage"]
NAN = float("nan")
MIN_SCANS_PER_CLASS = 2   # fewer scans of a class give no AUC worth a number (and a DeLong interval of NaN)
_SCAN_POINT_KEYS = ("threshold", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
                    "tp", "fn", "tn", "fp")


def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


def from_confusion(tn: int, fp: int, fn: int, tp: int) -> dict[str, float]:
    """Count-based metrics of a 2x2 confusion matrix (NaN where undefined, see module docstring)."""
    tn, fp, fn, tp = (int(v) for v in (tn, fp, fn, tp))
    if min(tn, fp, fn, tp) < 0:
        raise ValueError("confusion counts must be non-negative")
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "sensitivity": sens,
        "specificity": spec,
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "mcc": _ratio(tp * tn - fp * fn, math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
    }


def _confusion(y: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp); a bincount, fast enough to run inside the bootstrap."""
    return tuple(int(c) for c in np.bincount(2 * y + pred, minlength=4))


def _at_threshold(key: str, threshold: float):
    """A bootstrap metric_fn for one count-based metric at a fixed threshold."""
    return lambda y, p: from_confusion(*_confusion(y, (p >= threshold).astype(int)))[key]


def one_class_call(met: dict) -> str | None:
    """"hemorrhage" / "normal" when every case got that call (accuracy is then the class share), else None."""
    if met["tp"] + met["fp"] == met["n"]:
        return "hemorrhage"
    return "normal" if met["tn"] + met["fn"] == met["n"] else None


def binary_metrics(y_true, prob, threshold: float = 0.5, bootstrap: int = 0, seed: int = 0) -> dict:
    """Every metric at one threshold, with Wilson, DeLong and (bootstrap > 0) bootstrap intervals."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    if len(y) == 0:
        raise ValueError("no cases to score")
    tn, fp, fn, tp = _confusion(y, (p >= threshold).astype(int))
    out = {"threshold": float(threshold), "n": len(y), "n_pos": tp + fn, "tn": tn, "fp": fp, "fn": fn, "tp": tp,
           **from_confusion(tn, fp, fn, tp)}
    for key, (k, n) in {"accuracy": (tp + tn, len(y)), "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp),
                        "precision": (tp, tp + fp), "npv": (tn, tn + fn)}.items():
        out[f"{key}_ci"] = wilson_interval(k, n)
    two_classes = 0 < tp + fn < len(y)
    out["roc_auc"] = float(roc_auc_score(y, p)) if two_classes else NAN
    out["roc_auc_ci"] = delong_auc(y, p)[1:]
    out["pr_auc"] = float(average_precision_score(y, p)) if two_classes else NAN
    out["brier"] = float(brier_score_loss(y, p, labels=[0, 1]))
    bins = reliability_bins(y, p)
    seen = bins[bins["count"] > 0]
    out["ece"] = float((seen["count"] * (seen["frac_pos"] - seen["mean_prob"]).abs()).sum() / len(y))
    if bootstrap > 0:
        fns = {key: _at_threshold(key, threshold) for key in ("f1", "mcc", "balanced_accuracy")}
        fns["pr_auc"] = average_precision_score
        for key, fn in fns.items():
            out[f"{key}_ci"] = bootstrap_ci(y, p, fn, n_boot=bootstrap, seed=seed)
    return out


def auc_or_nan(y_true, prob) -> float:
    """ROC AUC, or NaN where the labels hold one class (a tiny validation split): never an error."""
    y = np.asarray(y_true)
    return float(roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else NAN


def auc_per_output(names, y_true, prob) -> dict[str, dict]:
    """{name: {roc_auc, roc_auc_ci (DeLong), n, n_pos}} for each column of (n, k) labels and scores, on the rows whose
    label is known (NaN: unknown, left out); a column whose labelled rows hold one class has no AUC and is omitted."""
    y, p, out = np.asarray(y_true, dtype=float), np.asarray(prob, dtype=float), {}
    for i, name in enumerate(names):
        known = np.isfinite(y[:, i])
        labels = y[known, i].astype(int)
        if 0 < labels.sum() < len(labels):
            auc, lo, hi = delong_auc(labels, p[known, i])
            out[name] = {"roc_auc": auc, "roc_auc_ci": (lo, hi), "n": int(known.sum()), "n_pos": int(labels.sum())}
    return out


def sensitivity_by_subtype(y_true, pred, members) -> dict[str, dict]:
    """{subtype: {sensitivity, sensitivity_ci (Wilson 95%), tp, n}} over each subtype's bleeds, n of them: `members`
    maps a subtype to one boolean per case (a case with two subtypes counts in both), `pred` holds the 0/1 calls. A
    subtype with no bleed among the cases is left out."""
    y = check_labels(y_true)
    called = check_labels(pred) == 1
    out = {}
    for name, member in members.items():
        member = np.asarray(member, dtype=bool)
        if member.shape != y.shape:
            raise ValueError(f"subtype {name!r} has {member.size} memberships for {len(y)} cases")
        bleeds = member & (y == 1)
        n, tp = int(bleeds.sum()), int((bleeds & called).sum())
        if n:
            out[name] = {"sensitivity": tp / n, "sensitivity_ci": wilson_interval(tp, n), "tp": tp, "n": n}
    return out


def scan_scores(scans, y_true, prob) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) per scan, in scan order: a scan is positive when any of its slices is, and scores the
    most suspicious slice's probability (max). Slices without a scan key (None, NaN) are left out."""
    y = check_labels(y_true)
    table = pd.DataFrame({"scan": scans, "y": y, "p": check_scores(prob, len(y))}).dropna(subset=["scan"])
    per_scan = table.groupby("scan")[["y", "p"]].max()
    return per_scan["y"].to_numpy(int), per_scan["p"].to_numpy(float)


def scan_metrics(scans, y_true, prob, thresholds: dict[str, float]) -> dict | None:
    """Scan-level n, n_pos, ROC AUC with its DeLong interval, and sensitivity / specificity (Wilson) at each named
    slice threshold (`at`); None without scan keys or below MIN_SCANS_PER_CLASS scans of either class."""
    if scans is None:
        return None
    y, p = scan_scores(scans, y_true, prob)
    if min(y.sum(), len(y) - y.sum()) < MIN_SCANS_PER_CLASS:
        return None
    points = {name: binary_metrics(y, p, threshold=t) for name, t in thresholds.items()}
    met = next(iter(points.values()))
    return {"n": met["n"], "n_pos": met["n_pos"], "roc_auc": met["roc_auc"], "roc_auc_ci": met["roc_auc_ci"],
            "at": {name: {k: m[k] for k in _SCAN_POINT_KEYS} for name, m in points.items()}}


def card_metrics(y_val, prob_val, y_test, prob_test, scans_test=None) -> dict:
    """Operating points on val, metrics at 0.5 on val and test, and test metrics at each point; with the test
    slices' scan keys, `metrics.test.scan` (scan_metrics at every point) where there are enough scans."""
    thresholds = choose_thresholds(y_val, prob_val)
    test = binary_metrics(y_test, prob_test, threshold=0.5)
    scan = scan_metrics(scans_test, y_test, prob_test, thresholds)
    return {"thresholds": thresholds,
            "metrics": {"val": binary_metrics(y_val, prob_val, threshold=0.5),
                        "test": test if scan is None else {**test, "scan": scan}},
            "metrics_at_thresholds": {k: binary_metrics(y_test, prob_test, threshold=t) for k, t in thresholds.items()}}


def choose_thresholds(y_val, prob_val) -> dict[str, float]:
    """Val operating points: youden, sens95 (sensitivity >= 0.95), spec95 (specificity >= 0.95); 0.5 if one class."""
    y = check_labels(y_val)
    p = check_scores(prob_val, len(y))
    if y.all() or not y.any():
        return {"default": 0.5, "youden": 0.5, "sens95": 0.5, "spec95": 0.5}
    # Keep every threshold: the first one reaching 95% sensitivity may sit on a straight stretch.
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    thr = np.clip(thr, 0.0, 1.0)
    return {"default": 0.5,
            "youden": float(thr[np.argmax(tpr - fpr)]),
            "sens95": float(thr[np.argmax(tpr >= 0.95)]),           # thresholds fall as tpr rises
            "spec95": float(thr[np.flatnonzero(fpr <= 0.05)[-1]])}


def ppv_npv_at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV a test with this sensitivity/specificity would have at another prevalence (Bayes)."""
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must lie in [0, 1], got {prevalence}")
    true_pos, false_pos = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    true_neg, false_neg = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return _ratio(true_pos, true_pos + false_pos), _ratio(true_neg, true_neg + false_neg)


def reliability_bins(y_true, prob, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width calibration bins: bin_lo, bin_hi, mean_prob, frac_pos, count (empty bins: NaN, 0)."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], p)  # calibration_curve's binning, so the two agree exactly
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_prob = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(idx, weights=y, minlength=n_bins) / count
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "mean_prob": mean_prob, "frac_pos": frac_pos,
                         "count": count})


def per_class_report(y_true, pred) -> pd.DataFrame:
    """The studies' classification report: rows normal, hemorrhage, accuracy, macro avg, weighted avg."""
    y = check_labels(y_true)
    report = classification_report(y, check_labels(pred), labels=[0, 1], target_names=CLASSES, output_dict=True,
                                   zero_division=np.nan)
    accuracy = report.pop("accuracy")
    frame = pd.DataFrame(report).T
    # Printed reports put accuracy in the f1-score column, over all cases.
    frame.loc["accuracy"] = [NAN, NAN, accuracy, len(y)]
    frame["support"] = frame["support"].astype(int)
    rows = [*CLASSES, "accuracy", "macro avg", "weighted avg"]
    return frame.loc[rows, ["precision", "recall", "f1-score", "support"]]


def roc_points(y_true, prob) -> pd.DataFrame:
    """ROC curve points (fpr, tpr, threshold; the first threshold is sklearn's inf); empty for one class."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    if y.all() or not y.any():
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"], dtype=float)
    fpr, tpr, thr = roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def pr_points(y_true, prob) -> pd.DataFrame:
    """Precision-recall points (recall, precision, threshold; NaN for the final recall-0 point)."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    if y.all() or not y.any():
        return pd.DataFrame(columns=["recall", "precision", "threshold"], dtype=float)
    precision, recall, thr = precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, NAN)})
