"""The sequence family: a registry CNN per slice and a bidirectional GRU/LSTM, trained on (N, K) stack rows."""
from __future__ import annotations

from pathlib import Path

import torch

from core.data.splits import Prepared
from core.data.stacks import stack_indices
from core.engine.config import TrainConfig
from core.engine.fit import fit_network
from core.engine.init import planned_architecture
from core.families.cnn import CNNFamily
from core.registry import ModelSpec


class SequenceFamily(CNNFamily):
    key = "sequence"

    def fit(self, spec: ModelSpec, data: Prepared, cfg: TrainConfig, run_dir: Path, device: torch.device) -> dict:
        rows = stack_indices(data.manifest, cfg.stack_size)
        split = data.manifest["split"].to_numpy()
        assert (split[rows] == split[:, None]).all(), "a stack mixes splits"
        return fit_network(spec, data, cfg, run_dir, device, rows=rows,
                           architecture=planned_architecture(spec.name, cfg))

    def input_line(self, card: dict) -> str:
        stack = card.get("architecture", {})
        return super().input_line(card) + (f"; stacks of {stack['stack_size']} slices encoded by "
                                               f"{stack['backbone']}" if stack else "")


SEQUENCE = SequenceFamily()
