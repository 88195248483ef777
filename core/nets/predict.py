"""Batched inference over decoded uint8 slices."""
from __future__ import annotations

import numpy as np
import torch

from core.data.decode import channels_first, to_model_input
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
