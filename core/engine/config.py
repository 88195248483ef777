"""How one run trains (TrainConfig), on which device, and as which torchrun rank."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist

from core.registry import DEFAULT_BACKBONE
from core.subtypes import OUTPUTS


@dataclass
class TrainConfig:
    models: list[str]
    out: str = "checkpoints/demo"
    epochs: int = 5
    image_size: int | None = None       # None: each model's native size
    batch_size: int = 32
    lr: float | None = None             # None: the model's scratch_lr, or 3e-4 fine-tuning pretrained weights
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    dropout: float | None = None        # every dropout layer's rate in training; None: the architecture's own
    head: str = "stock"                 # core.nets.cnn.HEADS: "gap" pools AlexNet's / the VGGs' features into one Linear
    augment: bool = True                # rotation, zoom, flip and jitter of training batches (core.data.decode)
    epoch_size: int | None = None       # training images per epoch, a fresh random draw each epoch; None: all
    patience: int | None = 4            # epochs without a better validation AUC before stopping; None: never
    time_budget_s: float | None = None  # per model: fewer epochs where the first one shows `epochs` won't fit
    run_budget_s: float | None = None   # whole run: networks' budgets shrink to their share (core.engine.budget)
    device: str = "auto"
    numerics: str = "auto"              # fp32, fp32_cl, bf16, bf16_cl, or auto: the fastest, timed (core.nets.numerics)
    seed: int = 0
    pretrained: bool = False
    weights_dir: str | None = None
    init_from: str | None = None        # a run whose verified weights each network starts from (core.engine.init)
    resume: bool = False
    data: list[str] | None = None       # the --data folder(s), pooled; None: synthetic phantoms
    framing: str = "none"               # core.io.framing: "head" crops every slice to its head before resizing
    windows: str = "brain"              # core.io.imaging.WINDOW_SETS: the HU windows a slice becomes, one per channel
    sequence_backbone: str = DEFAULT_BACKBONE   # the registry CNN a sequence model encodes slices with
    stack_size: int = 5                 # slices per stack, the predicted one in the middle
    attention: float = 0.0              # weight of the loss on Grad-CAM evidence outside training bleeds' masks; 0: off
    subtypes: bool = False              # networks get a multi-label head: any hemorrhage + the five subtypes
    per_model: dict = field(default_factory=dict)   # {model: {field: value}} replacing the above for one model
    args: dict = field(default_factory=dict)   # the command line as given, recorded in cards
    on_epoch: Callable[[list[dict], int], None] | None = None   # rank 0, per epoch: (history so far, epochs planned)

    @property
    def outputs(self) -> list[str]:
        """What each logit of the run's networks is (a card's "outputs"): hemorrhage first, then any subtypes."""
        return list(OUTPUTS if self.subtypes else OUTPUTS[:1])

    def recorded_args(self) -> dict:
        """What a card records of the run's settings: the command line, else every field but the callback."""
        return self.args or {f.name: getattr(self, f.name) for f in fields(self) if f.name != "on_epoch"}


def resolve_device(name: str) -> torch.device:
    """"auto": a CUDA GPU, else Apple's MPS, else the CPU; an asked-for device that is absent exits."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind, present in available.items() if present))
    if not available.get(name, False):
        raise SystemExit(f"hemolens: --device {name} was asked for but this machine has none.")
    return torch.device(name)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def agree(value: float, device: torch.device) -> float:
    """Rank 0's number, on every rank: early stopping and budgets must not diverge between DDP workers."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return float(t.item())


def setup_distributed(device: torch.device) -> torch.device:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); the rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return device
