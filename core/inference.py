"""Any saved model, whatever its family, as P(hemorrhage) per case via `load_predictor` / `predict_all`."""
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
    """P(hemorrhage) per case per predictor (ensembles after members); images_at(size) -> (N, S, S) uint8."""
    cases = Cases(images_at, manifest)
    for name, p in sorted(predictors.items(), key=lambda item: bool(item[1].members)):
        cases.probs[name] = p.predict(cases)
    return {name: cases.probs[name] for name in predictors}
