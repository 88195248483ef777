"""Wilson, DeLong, McNemar and stratified bootstrap intervals/tests; one-class input gives NaN, not an error."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import binomtest, norm, rankdata

NAN_PAIR = (float("nan"), float("nan"))


def check_labels(y_true) -> np.ndarray:
    """Labels as an int array of 0/1; anything else is a caller bug and raises."""
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be a 1-D array of 0 (normal) and 1 (hemorrhage)")
    return y.astype(int)


def check_scores(prob, n: int) -> np.ndarray:
    """Scores as a float array of n finite values."""
    p = np.asarray(prob, dtype=float)
    if p.shape != (n,):
        raise ValueError(f"expected {n} scores, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite")
    return p


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes/n (scipy's binomtest)."""
    if n == 0:
        return NAN_PAIR
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _cov(v: np.ndarray) -> np.ndarray:
    """Sample covariance of the rows; NaN when a class has a single case (no spread to estimate)."""
    if v.shape[1] < 2:
        return np.full((len(v), len(v)), np.nan)
    return np.atleast_2d(np.cov(v))


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance for k score rows (k, n) on the same cases (Sun & Xu 2014)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    # Structural components: the share of negatives each positive outranks, and vice versa.
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, _cov(v10) / m + _cov(v01) / n


def delong_auc(y_true, prob, confidence: float = 0.95) -> tuple[float, float, float]:
    """(auc, lo, hi): ROC AUC with a DeLong interval (see module docstring)."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    if y.all() or not y.any():
        return (float("nan"),) * 3
    auc, cov = _delong(y, p[None, :])
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(max(cov[0, 0], 0.0))
    lo, hi = np.clip([auc[0] - half, auc[0] + half], 0.0, 1.0)
    return float(auc[0]), float(lo), float(hi)


def delong_test(y_true, prob_a, prob_b) -> float:
    """Two-sided p-value for equal ROC AUCs of two models scored on the same cases."""
    y = check_labels(y_true)
    a, b = check_scores(prob_a, len(y)), check_scores(prob_b, len(y))
    if y.all() or not y.any():
        return float("nan")
    auc, cov = _delong(y, np.vstack([a, b]))
    diff = auc[0] - auc[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if diff == 0:
        return 1.0
    if var <= 0:  # the difference is the same on every case: no sampling noise to weigh it against
        return 0.0
    return float(2 * norm.sf(abs(diff) / np.sqrt(var)))


def mcnemar_test(y_true, pred_a, pred_b) -> float:
    """Exact McNemar p-value for paired accuracy: binomial test on the discordant pairs."""
    y = check_labels(y_true)
    right_a = np.asarray(pred_a).astype(int) == y
    right_b = np.asarray(pred_b).astype(int) == y
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_ci(y_true, prob, metric_fn: Callable[[np.ndarray, np.ndarray], float], n_boot: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of metric_fn(y, prob) over seeded, class-stratified resamples."""
    y = check_labels(y_true)
    p = check_scores(prob, len(y))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return NAN_PAIR
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))], axis=1)
    stats = np.array([metric_fn(y[i], p[i]) for i in idx], dtype=float)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return NAN_PAIR
    lo, hi = np.percentile(stats, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)
