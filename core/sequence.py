"""Slice-sequence models (study B; the RSNA 2019 ICH winners' recipe): a registry CNN encodes every
slice of a short stack of adjacent slices, a bidirectional GRU/LSTM reads the stack, and a linear
head scores each slice. The prediction for a slice is the centre logit of the stack around it.

Stacks are index rows into the decoded slices (`stack_indices`), so the training engine of
core.training serves CNNs and sequence models alike: a slice is a row of one index, a stack a row
of K. A slice whose series is unknown is a stack of itself repeated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.models import REGISTRY, count_gmacs, create_model

DEFAULT_BACKBONE, DEFAULT_STACK, DEFAULT_HIDDEN = "resnet18", 5, 128


class SequenceClassifier(nn.Module):
    """x (B, K, 3, H, W) -> the centre slice's hemorrhage logit (B, 1); forward_all -> (B, K).
    A (B, 3, H, W) input is a stack of one, so single-slice callers (uploads, Grad-CAM) work."""

    def __init__(self, kind: str, backbone: str, stack_size: int, encoder: nn.Module, hidden: int):
        super().__init__()
        self.kind, self.backbone_name, self.stack_size = kind, backbone, stack_size
        self.encoder = encoder
        features = _strip_head(encoder)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[kind]
        self.rnn = rnn(features, hidden, batch_first=True, bidirectional=True)
        # The head sees each slice's own features next to the recurrent context: the per-slice
        # evidence of a plain CNN stays one linear layer away, the neighbours add to it.
        self.head = nn.Linear(features + 2 * hidden, 1)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(1)
        b, k = x.shape[:2]
        features = self.encoder(x.flatten(0, 1)).view(b, k, -1).float()
        # The recurrence is tiny (K steps): it runs in float32 under the trainer's bf16 autocast, so
        # no cuDNN RNN kernel is ever asked for a reduced-precision variant it may lack.
        with torch.autocast(x.device.type, enabled=False):
            context, _ = self.rnn(features)
        return self.head(torch.cat([features, context], dim=-1)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward_all(x)
        centre = logits.shape[1] // 2
        return logits[:, centre:centre + 1]


def _strip_head(encoder: nn.Module) -> int:
    """Replaces the registry CNN's 1-logit head (its last Linear, see core.models._binary_head) by
    identity, in place; returns the width of the pooled features it now yields."""
    path, head = [(n, m) for n, m in encoder.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attr = path.rpartition(".")
    setattr(encoder.get_submodule(parent), attr, nn.Identity())
    return head.in_features


def build_sequence_model(kind: str, backbone: str = DEFAULT_BACKBONE, stack_size: int = DEFAULT_STACK,
                         pretrained: bool = False, weights_dir: str | Path | None = None,
                         hidden: int = DEFAULT_HIDDEN) -> SequenceClassifier:
    if kind not in ("gru", "lstm"):
        raise ValueError(f"unknown sequence kind {kind!r}; choose gru or lstm")
    if REGISTRY.get(backbone) is None or REGISTRY[backbone].family != "cnn":
        raise ValueError(f"backbone {backbone!r} is not a registry CNN")
    if stack_size < 1:
        raise ValueError(f"stack_size must be >= 1, got {stack_size}")
    encoder = create_model(backbone, pretrained=pretrained, weights_dir=weights_dir)
    model = SequenceClassifier(kind, backbone, stack_size, encoder, hidden)
    model.pretrained_loaded = encoder.pretrained_loaded
    return model


class _RepeatedSlice(nn.Module):
    """Feeds the model a stack of K copies of a (B, 3, S, S) input (core.models.count_gmacs builds one slice)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x.unsqueeze(1).expand(-1, self.k, -1, -1, -1))


def count_stack_gmacs(model: SequenceClassifier, input_size: int) -> float:
    """MACs of one prediction: a (1, K, 3, S, S) stack through the encoder and the recurrence."""
    return count_gmacs(_RepeatedSlice(model, model.stack_size), input_size)


# --- stacks ------------------------------------------------------------------------------------------

def stack_indices(manifest: pd.DataFrame, k: int) -> np.ndarray:
    """(N, k) manifest row indices: for each row, the k slices of its series around it in slice order
    (`series`, `slice_index` columns), the row itself at k // 2, edge slices repeated at the ends.

    A row without a series (or a manifest without the columns) is a stack of itself repeated. Where
    the manifest has a `split`, a series is cut at split boundaries (a dataset's own split folders
    may cut one; our splits never do), so a stack never mixes splits."""
    if k < 1:
        raise ValueError(f"stack size must be >= 1, got {k}")
    n = len(manifest)
    stacks = np.repeat(np.arange(n)[:, None], k, axis=1)
    if "series" not in manifest.columns:
        return stacks
    rows = pd.DataFrame({"series": manifest["series"].to_numpy(), "row": np.arange(n),
                         "slice": pd.to_numeric(manifest.get("slice_index"), errors="coerce")
                         if "slice_index" in manifest.columns else np.nan})
    keys = ["series"]
    if "split" in manifest.columns:
        rows["split"], keys = manifest["split"].to_numpy(), ["series", "split"]
    rows = rows[rows["series"].notna()].sort_values(["slice", "row"], na_position="last", kind="stable")
    offsets = np.arange(k) - k // 2
    for members in rows.groupby(keys, sort=False)["row"]:
        members = members[1].to_numpy()                          # this series' rows in slice order
        at = np.clip(np.arange(len(members))[:, None] + offsets, 0, len(members) - 1)
        stacks[members] = members[at]
    return stacks


def slice_order(scans: list, names: list[str]) -> list[int]:
    """Indices that put several uploaded slices of one series in order: DICOM position along the
    slice normal, then InstanceNumber, then the slice number in the file name (core.data naming,
    else its last number), then the name."""
    import re

    from core.data import series_of_stem

    def key(i):
        stem = Path(names[i]).stem
        number = series_of_stem(stem)[1]
        if number is None:
            digits = re.findall(r"\d+", stem)
            number = int(digits[-1]) if digits else None
        scan = scans[i]
        return (scan.slice_position is None, scan.slice_position or 0.0,
                scan.instance_number is None, scan.instance_number or 0,
                number is None, number or 0, names[i])

    return sorted(range(len(scans)), key=key)


# --- training ----------------------------------------------------------------------------------------

def fit_sequence(name: str, data, cfg, run_dir: Path, device: torch.device) -> dict:
    """Train one sequence model with the CNN engine (core.training.fit_model) on stacks; returns its card."""
    from core.training import fit_model   # core.training dispatches here: import at call time

    architecture = {"backbone": cfg.sequence_backbone, "stack_size": cfg.stack_size, "hidden": DEFAULT_HIDDEN}
    rows = stack_indices(data.manifest, cfg.stack_size)
    split = data.manifest["split"].to_numpy()
    assert (split[rows] == split[:, None]).all(), "a stack mixes splits"
    return fit_model(name, data, cfg, run_dir, device, rows=rows, architecture=architecture)


# --- explanation -------------------------------------------------------------------------------------

class _SlicesAsBatch(nn.Module):
    """Shows the CAM one stack as a batch of K slices, (K, 3, H, W) -> the centre logit (1, 1): then
    the target layer's K activations give K maps, and the library's 2-D path applies (it reads a
    5-D input as a 3-D volume)."""

    def __init__(self, model: SequenceClassifier):
        super().__init__()
        self.model = model

    def forward(self, slices):
        return self.model(slices.unsqueeze(0))


def sequence_cam(model: SequenceClassifier, stack: torch.Tensor, method: str = "gradcam",
                 target: int = 1) -> np.ndarray:
    """(K, H, W) float32 maps in [0, 1]: where in each slice of a normalised (1, K, 3, H, W) stack
    the evidence for the centre slice's logit lies (target 1 = hemorrhage, 0 = normal)."""
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from core.explain import _LOCK, METHODS, _graph_from, _normalise

    if stack.ndim != 5 or len(stack) != 1:
        raise ValueError(f"sequence_cam needs one (1, K, 3, H, W) stack, got shape {tuple(stack.shape)}")
    if method not in METHODS or method == "scorecam":
        raise ValueError(f"{method!r} is not a gradient CAM method; choose from "
                         f"{', '.join(m for m in METHODS if m != 'scorecam')}")
    device = next(model.parameters()).device
    with torch.inference_mode(False):
        slices = stack[0].detach().to(device, torch.float32).clone()
    model.eval()
    layers = REGISTRY[model.backbone_name].cam_layers(model.encoder)
    maps = None
    # cuDNN runs RNN backward in training mode only; the native kernels have no such rule.
    with _LOCK, torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False), \
            _graph_from(model, layers):
        with METHODS[method](model=_SlicesAsBatch(model), target_layers=layers) as cam:
            maps = cam(input_tensor=slices, targets=[BinaryClassifierOutputTarget(target)])
    # The `with` block swallows some exceptions: check what came out.
    expected = (len(slices), *slices.shape[-2:])
    if maps is None or np.shape(maps) != expected or not np.isfinite(maps).all():
        got = "nothing" if maps is None else f"shape {np.shape(maps)}"
        raise RuntimeError(f"{method} on a {model.kind} stack failed: expected finite maps {expected}, got {got}")
    return _normalise(maps)
