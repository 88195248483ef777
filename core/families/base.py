"""The Family interface: callers ask the family (fit, load, describe, explain) instead of testing its name."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from core.data.features import extract_features
from core.data.splits import Prepared
from core.engine.config import TrainConfig
from core.io.store import WEIGHTS
from core.metrics.domain import DomainModel
from core.nets.build import output_names
from core.registry import ModelSpec


class FitError(ValueError):
    """A model that cannot be fitted from what the run holds; one readable sentence (the run goes on)."""


@dataclass
class Cases:
    """The cases every predictor of a run scores together."""
    images_at: Callable[[int], np.ndarray]       # (N, S, S) uint8 slices at one size, (N, S, S, C) for C windows
    manifest: pd.DataFrame | None = None         # `series` / `slice_index`: neighbours for sequence models
    probs: dict[str, np.ndarray] = field(default_factory=dict)   # predictions made so far (ensemble members)
    _sized: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _features: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def at(self, size: int) -> np.ndarray:
        """The slices at one size, resized once however many predictors read them."""
        if size not in self._sized:
            self._sized[size] = self.images_at(size)
        return self._sized[size]

    def features_at(self, size: int) -> np.ndarray:
        """The slices' hand-crafted features (core.data.features) at one size, computed once however many classical
        models and domain checks read them."""
        if size not in self._features:
            self._features[size] = extract_features(self.at(size))
        return self._features[size]


class Predictor(ABC):
    """A saved model, verified and loaded, that turns cases into P(hemorrhage)."""
    members: tuple[str, ...] = ()   # models whose probabilities it needs first (an ensemble's)

    def __init__(self, card: dict, family: "Family"):
        self.card, self.family = card, family
        self.domain: DomainModel | None = None   # its training data's statistics (core.inference.load_predictor)

    @property
    def name(self) -> str:
        return self.card["model"]

    @property
    def input_size(self) -> int | None:
        return self.card.get("input_size")

    @property
    def thresholds(self) -> dict:
        return self.card["thresholds"]

    @property
    def outputs(self) -> list[str]:
        """What predict_outputs' columns are: ["any"], or a subtypes head's "any" and five subtypes."""
        return output_names(self.card)

    @abstractmethod
    def predict(self, cases: Cases) -> np.ndarray:
        """P(hemorrhage) for each case."""

    def predict_outputs(self, cases: Cases) -> np.ndarray:
        """(N, len(outputs)) probabilities per case, column 0 P(hemorrhage)."""
        return self.predict(cases)[:, None]

    def domain_features(self, cases: Cases) -> np.ndarray | None:
        """(N, D) the model's own features of each case, which its domain check measures; None: it has none (an
        ensemble reads probabilities, and its members are checked)."""
        return None


class Family(ABC):
    key: ClassVar[str]
    is_network: ClassVar[bool] = False         # a torch network: trained in epochs (budgets, resume, DDP)
    explained_by_cam: ClassVar[bool] = False   # Grad-CAM maps (otherwise importances or members)
    needs_images: ClassVar[bool] = True        # False: fitted on the run's saved predictions, after the others
    # The model file `load` reads beside card.json: the family names it, never the card (which could name a pickle).
    weights_file: ClassVar[str] = WEIGHTS

    @abstractmethod
    def fit(self, spec: ModelSpec, data: Prepared | None, cfg: TrainConfig, run_dir: Path,
            device: torch.device) -> dict:
        """Fit one model, write its folder and return its card ({} on DDP ranks other than 0)."""

    @abstractmethod
    def load(self, model_dir: str | Path, device: str | torch.device = "cpu") -> Predictor:
        """The saved model, its files verified against its card first."""

    @abstractmethod
    def describe_input(self, card: dict) -> str:
        """One Markdown line: what the model reads."""
