"""The CNN family: one slice in, one logit out, explained by Grad-CAM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.splits import Prepared
from core.data.stacks import stack_indices
from core.engine.config import TrainConfig
from core.engine.fit import fit_network
from core.families.base import Cases, Family, Predictor
from core.io.framing import framing_of
from core.nets.build import load_network, output_names
from core.engine.init import planned_architecture
from core.nets.numerics import usable
from core.nets.predict import pooled_features, predict_outputs
from core.registry import ModelSpec


class NetworkPredictor(Predictor):
    """A CNN or sequence network; `model` and `card` are what core.explain.cam draws maps from."""

    def __init__(self, card: dict, family: Family, model: torch.nn.Module, device: str | torch.device):
        super().__init__(card, family)
        # The numerics it was trained and scored in, so the app reproduces predictions.csv.
        self.numerics = usable(card.get("training", {}).get("numerics", {}).get("choice"), torch.device(device))
        self.model, self.device = self.numerics.model(model), device

    @property
    def stack_size(self) -> int | None:
        return self.card.get("architecture", {}).get("stack_size")

    def predict(self, cases: Cases) -> np.ndarray:
        return self.predict_outputs(cases)[:, 0]

    def predict_outputs(self, cases: Cases) -> np.ndarray:
        images = cases.at(self.input_size)
        rows = None
        if self.stack_size:   # neighbours in the series where the manifest knows them, else the slice repeated
            manifest = cases.manifest if cases.manifest is not None else pd.DataFrame(index=range(len(images)))
            rows = stack_indices(manifest.reset_index(drop=True), self.stack_size)
        return predict_outputs(self.model, images, self.card["mean"], self.card["std"], self.device, rows=rows,
                               numerics=self.numerics)

    def domain_features(self, cases: Cases) -> np.ndarray:
        return pooled_features(self.model, cases.at(self.input_size), self.card["mean"], self.card["std"],
                               self.device, numerics=self.numerics)


class CNNFamily(Family):
    key = "cnn"
    is_network = True
    explained_by_cam = True

    def fit(self, spec: ModelSpec, data: Prepared, cfg: TrainConfig, run_dir: Path, device: torch.device) -> dict:
        return fit_network(spec, data, cfg, run_dir, device, architecture=planned_architecture(spec.name, cfg))

    def load(self, model_dir: str | Path, device: str | torch.device = "cpu") -> NetworkPredictor:
        loaded = load_network(model_dir, device)
        return NetworkPredictor(loaded.card, self, loaded.model, device)

    def describe_input(self, card: dict) -> str:
        cam = card.get("cam")   # absent from cards written before CAM layers followed the input size
        outputs = output_names(card)
        return self.input_line(card) + head_line(card) + (f"\n- Grad-CAM layer: `{', '.join(cam['layers'])}` "
                                        f"({cam['cells']}x{cam['cells']} cells)" if cam else "") + (
            f"\n- Outputs (multi-label, one sigmoid each): {', '.join(outputs)}" if len(outputs) > 1 else "")

    def input_line(self, card: dict) -> str:
        return (f"- Input: {card['input_size']} px (native {card.get('native_input_size', '?')}), window "
                f"{card.get('window', '?')}, {card.get('channels', '')}; resize: {card.get('resize_policy', '')}"
                + (", framed to the head first" if framing_of(card) == "head" else ""))


def head_line(card: dict) -> str:
    """The card's classifier where it is not the published one."""
    if card.get("architecture", {}).get("head") != "gap":
        return ""
    return "\n- Classifier: global average pooling + one linear layer, in place of the published fully connected head"


CNN = CNNFamily()
