"""Any saved model of a run, whatever its family, as one thing that turns slices into probabilities.

Evaluation and the dashboard both go through `load_predictor` and `predict_all`, so a CNN, a
CNN+GRU over slice stacks, an SVM on hand-crafted features and an ensemble of them all answer the
same question the same way: P(hemorrhage) for each case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core import checkpoints as ckpt


@dataclass
class Predictor:
    name: str
    card: dict
    loaded: object   # ckpt.LoadedModel (cnn, sequence), LoadedClassical or LoadedEnsemble

    @property
    def family(self) -> str:
        return self.card.get("family", "cnn")

    @property
    def input_size(self) -> int | None:
        return self.card.get("input_size")

    @property
    def stack_size(self) -> int | None:
        return self.card.get("architecture", {}).get("stack_size") if self.family == "sequence" else None

    @property
    def members(self) -> list[str]:
        return list(self.card.get("members", []))

    @property
    def has_cam(self) -> bool:
        """Grad-CAM needs a convolutional network; classical models explain with feature importances."""
        return self.family in ("cnn", "sequence")


def load_predictor(model_dir: str | Path, device: str = "cpu") -> Predictor:
    """The model in model_dir, its weights verified against the card's sha256 before use."""
    card = ckpt.load_card(model_dir)
    family = card.get("family", "cnn")
    if family == "classical":
        from core.classical import load_classical
        loaded = load_classical(model_dir)
    elif family == "ensemble":
        from core.ensemble import load_ensemble
        loaded = load_ensemble(model_dir)
    else:
        loaded = ckpt.load(model_dir, device)
    return Predictor(card["model"], card, loaded)


def stack_rows(n: int, k: int, manifest: pd.DataFrame | None = None) -> np.ndarray:
    """(n, k) stacks of slice indices: neighbours in the series where the manifest knows them,
    otherwise each slice repeated (a lone slice, e.g. one upload, is a stack of itself)."""
    if manifest is not None and "series" in manifest and "slice_index" in manifest:
        from core.sequence import stack_indices
        return stack_indices(manifest.reset_index(drop=True), k)
    return np.repeat(np.arange(n)[:, None], k, axis=1)


def predict_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                manifest: pd.DataFrame | None = None, device: str = "cpu") -> dict[str, np.ndarray]:
    """P(hemorrhage) per case for every predictor. images_at(size) gives the cases' (N, S, S) uint8
    slices at one size; it is called once per size. Ensembles are combined from their members'
    probabilities, so every member must be among the predictors."""
    from core.predict import predict_probs

    out: dict[str, np.ndarray] = {}
    sized: dict[int, np.ndarray] = {}
    for name, p in predictors.items():
        if p.family == "ensemble":
            continue
        if p.input_size not in sized:
            sized[p.input_size] = images_at(p.input_size)
        images = sized[p.input_size]
        if p.family == "classical":
            out[name] = p.loaded.predict(images)
            continue
        rows = stack_rows(len(images), p.stack_size, manifest) if p.stack_size else None
        out[name] = predict_probs(p.loaded.model, images, p.card["mean"], p.card["std"], device, rows=rows)
    for name, p in predictors.items():
        if p.family == "ensemble":
            missing = [m for m in p.members if m not in out]
            if missing:
                raise ckpt.CheckpointError(f"ensemble {name} needs its members {', '.join(missing)}, "
                                           "which are not in this run.")
            out[name] = p.loaded.predict({m: out[m] for m in p.members})
    return {name: out[name] for name in predictors}
