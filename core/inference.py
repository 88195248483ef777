"""Any saved model of a run, whatever its family, as one thing that turns slices into probabilities.

Evaluation and the dashboard both go through `load_predictor` and `predict_all`, so a CNN, a
CNN+GRU over slice stacks, an SVM on hand-crafted features and an ensemble of them all answer the
same question the same way: P(hemorrhage) for each case.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.families import family_of_card
from core.families.base import Cases, Predictor
from core.io import store


def load_predictor(model_dir: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model in model_dir, its files verified against the card's sha256 before use."""
    return family_of_card(store.load_card(model_dir)).load(model_dir, device)


def predict_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """P(hemorrhage) per case for every predictor. images_at(size) gives the cases' (N, S, S) uint8
    slices at one size; it is called once per size. A predictor with members (an ensemble) runs after
    them, so every member must be among the predictors."""
    cases = Cases(images_at, manifest)
    for name, p in sorted(predictors.items(), key=lambda item: bool(item[1].members)):
        cases.probs[name] = p.predict(cases)
    return {name: cases.probs[name] for name in predictors}
