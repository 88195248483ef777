"""How far a case lies from what a model was trained on: its out-of-distribution (domain) score.

Mahalanobis distance on the model's own features (Lee et al. 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks"): one mean per class, one covariance shared by the classes,
the distance to the nearest class mean. Features are standardised on the training cases first and the covariance
shrunk (Ledoit-Wolf): a run has fewer training slices than a network has feature channels. No extra data is needed:
the threshold is the validation split's PASS_RATE quantile, so that share of in-distribution cases passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf

PASS_RATE = 0.95          # of the validation split's cases score at or below the threshold
MAX_FIT_CASES = 600       # training cases the statistics are fitted on (a seeded sample beyond that)
BRAIN_GREY = (20, 235)    # brain-window grey levels that are neither air nor saturated bone
MIN_BRAIN_SHARE = 0.25    # of a head's pixels: below it the slice holds too little brain to be a head CT


@dataclass(frozen=True)
class DomainModel:
    """Training-split statistics of one model's features and the validation split's scores under them."""
    centre: np.ndarray        # (D,) standardisation
    scale: np.ndarray         # (D,)
    means: np.ndarray         # (K, D) class means, standardised
    precision: np.ndarray     # (D, D) inverse of the shared shrunk covariance
    validation: np.ndarray    # sorted validation scores: what "usual" looks like
    threshold: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to its nearest class mean (larger: less like the training data)."""
        z = (np.asarray(features, np.float64) - self.centre) / self.scale
        d = z[:, None, :] - self.means[None]                                   # (N, K, D)
        squared = np.einsum("nkd,de,nke->nk", d, self.precision, d)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def unusual(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Share of the validation cases that score below each score (1.0: beyond all of them)."""
        return np.searchsorted(self.validation, np.asarray(scores), side="left") / max(len(self.validation), 1)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"centre": self.centre, "scale": self.scale, "means": self.means, "precision": self.precision,
                "validation": self.validation, "threshold": np.array([self.threshold])}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> "DomainModel":
        return cls(*(np.asarray(t[k], np.float64) for k in ("centre", "scale", "means", "precision", "validation")),
                   threshold=float(np.asarray(t["threshold"]).ravel()[0]))


def fit_domain(train: np.ndarray, labels: np.ndarray, validation: np.ndarray,
               pass_rate: float = PASS_RATE) -> DomainModel:
    """Statistics of (N, D) training features with their labels, calibrated on (M, D) validation features
    (on the training features themselves where there are none: a looser, optimistic threshold)."""
    train = np.asarray(train, np.float64)
    if len(train) < 2:
        raise ValueError("a domain model needs at least two training cases")
    centre, scale = train.mean(axis=0), train.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)                 # a constant feature tells nothing apart
    z = (train - centre) / scale
    labels = np.asarray(labels)
    classes = [c for c in np.unique(labels) if (labels == c).sum() > 0]
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    residuals = z - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
    partial = DomainModel(centre, scale, means, precision, np.zeros(0), np.inf)
    calibration = partial.scores(validation if len(validation) else train)
    return DomainModel(centre, scale, means, precision, np.sort(calibration),
                       float(np.quantile(calibration, pass_rate, method="higher")))   # at least pass_rate pass


def beyond_validation(beyond: float | None) -> bool:
    """Whether a case scores above every validation case (DomainModel.percentile 1.0): the banner's bar, stricter
    than a tile's PASS_RATE flag, since two checks at 5 % each would warn on one in ten ordinary cases (NOTES)."""
    return beyond is not None and beyond >= 1.0


def out_of_domain(run_beyond: float | None, models_beyond: list[float]) -> bool:
    """Whether a case is out of a run's domain, as the Scan page warns: the run's own image check puts it beyond
    every validation case, or half or more of the models' own checks do (DomainModel.percentile of each)."""
    outside = sum(map(beyond_validation, models_beyond))
    return beyond_validation(run_beyond) or (len(models_beyond) > 0 and 2 * outside >= len(models_beyond))


def input_problem(grey: np.ndarray, head: np.ndarray | None) -> str:
    """Why a brain-window slice cannot be a head CT slice, in a few words ('' when it may be): no head found,
    or a head made of air and saturated pixels (a mask, a drawing, bone window)."""
    if head is None or not head.any():
        return "no head found in the image"
    inside = grey[head]
    share = float(((inside > BRAIN_GREY[0]) & (inside < BRAIN_GREY[1])).mean())
    if share < MIN_BRAIN_SHARE:
        return f"only {share:.0%} of the head is at brain densities"
    return ""
