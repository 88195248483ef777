"""Slice-sequence networks (RSNA 2019 recipe): CNN per slice, BiGRU/LSTM over the stack, centre-slice logits."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.nets.cnn import CNNS, create_cnn, last_linear
from core.registry import DEFAULT_BACKBONE

DEFAULT_STACK, DEFAULT_HIDDEN = 5, 128


class SequenceClassifier(nn.Module):
    """x (B, K, 3, H, W) or (B, 3, H, W) -> centre slice's logits (B, C); forward_all -> (B, K, C)."""

    def __init__(self, kind: str, backbone: str, stack_size: int, encoder: nn.Module, hidden: int,
                 num_outputs: int = 1):
        super().__init__()
        self.kind, self.backbone_name, self.stack_size = kind, backbone, stack_size
        self.encoder = encoder
        features = _strip_head(encoder)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind]
        self.rnn = rnn(features, hidden, batch_first=True, bidirectional=True)
        # Head sees each slice's own features next to the recurrent context.
        self.head = nn.Linear(features + 2 * hidden, num_outputs)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(1)
        b, k = x.shape[:2]
        features = self.encoder(x.flatten(0, 1)).view(b, k, -1).float()
        # Tiny recurrence runs in float32 under bf16 autocast: cuDNN may lack reduced-precision RNNs.
        with torch.autocast(x.device.type, enabled=False):
            context, _ = self.rnn(features)
        return self.head(torch.cat([features, context], dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_all(x)
        return logits[:, logits.shape[1] // 2]


def _strip_head(encoder: nn.Module) -> int:
    """Replaces the CNN's 1-logit head by identity in place; returns the pooled feature width."""
    path, head = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = path.rpartition(".")
    setattr(encoder.get_submodule(parent), attr, nn.Identity())
    return head.in_features


def build_sequence_model(kind: str, backbone: str = DEFAULT_BACKBONE, stack_size: int = DEFAULT_STACK,
                         pretrained: bool = False, weights_dir: str | Path | None = None,
                         hidden: int = DEFAULT_HIDDEN, num_outputs: int = 1) -> SequenceClassifier:
    if kind not in ("gru", "lstm"):
        raise ValueError(f"unknown sequence kind {kind!r}; choose gru or lstm")
    if backbone not in CNNS:
        raise ValueError(f"backbone {backbone!r} is not a registry CNN")
    if stack_size < 1:
        raise ValueError(f"stack_size must be >= 1, got {stack_size}")
    encoder = create_cnn(backbone, pretrained=pretrained, weights_dir=weights_dir)
    model = SequenceClassifier(kind, backbone, stack_size, encoder, hidden, num_outputs)
    model.pretrained_loaded = encoder.pretrained_loaded
    return model


KINDS = {"cnn_gru": "gru", "cnn_lstm": "lstm"}   # registry name -> recurrent layer
