"""Batched inference over decoded uint8 slices."""
from __future__ import annotations

import numpy as np
import torch

from core.data.decode import channels_first, to_model_input
from core.nets.build import feature_layer
from core.nets.numerics import Numerics
from core.nets.sharing import exclusive


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, images: np.ndarray | torch.Tensor, mean, std,
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    rows: np.ndarray | None = None, numerics: Numerics = Numerics()) -> np.ndarray:
    """(n, outputs) sigmoid of every logit per (S, S) or (S, S, C) uint8 slice, column 0 P(hemorrhage); `rows`: (n,)
    slices or (n, K) stacks, default every slice. `numerics`: the model's (core.nets.numerics), the model already in
    its memory format."""
    device = torch.device(device)
    model.eval()
    images = channels_first(torch.as_tensor(images))
    rows = torch.as_tensor(np.arange(len(images)) if rows is None else rows)
    out = []
    with exclusive(model):   # a forward during another thread's CAM of this model would fire its hooks
        for start in range(0, len(rows), batch_size):
            batch = images[rows[start:start + batch_size]].to(device)
            with numerics.autocast(device):
                logits = model(numerics.input(to_model_input(batch, mean, std)))
            out.append(torch.sigmoid(logits.float()).reshape(len(logits), -1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), dtype=np.float32)


def predict_probs(*args, **kwargs) -> np.ndarray:
    """P(hemorrhage) per slice: output 0 of predict_outputs (same arguments)."""
    return predict_outputs(*args, **kwargs)[:, 0]


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, images: np.ndarray | torch.Tensor, mean, std,
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    numerics: Numerics = Numerics()) -> np.ndarray:
    """(n, C) activations of core.nets.build.feature_layer averaged over space, per slice seen alone (a sequence
    model's encoder reads it): the features its domain check measures distances on."""
    device = torch.device(device)
    cnn, layer = feature_layer(model)
    cnn.eval()
    images = channels_first(torch.as_tensor(images))
    pooled = []
    hook = layer.register_forward_hook(lambda m, args, out: pooled.append(out.float().mean(dim=(-2, -1)).cpu()))
    try:
        with exclusive(model):
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device)
                with numerics.autocast(device):
                    cnn(numerics.input(to_model_input(batch, mean, std)))
    finally:
        hook.remove()
    return torch.cat(pooled).numpy() if pooled else np.zeros((0, 0), dtype=np.float32)
