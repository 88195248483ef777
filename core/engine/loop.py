"""torchvision-style train_one_epoch and evaluate over index rows (core.data.stacks), in a model's numerics."""
from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.data.decode import to_model_input, to_model_input_and_masks
from core.engine.config import TrainConfig, is_main
from core.metrics.binary import auc_or_nan
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.nets.numerics import Numerics
from core.nets.predict import predict_probs


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


AUGMENT, DROPOUT = 1, 2   # an epoch's random streams besides its sample order (the sampler's: seed + epoch)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """One stream's seed for one epoch, a pure function of (seed, epoch): a resumed run replays the same epochs.
    Mixed by SeedSequence, so the streams do not share a seed (seed * 10_007 + epoch gave both streams one)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def short_run_batch_norm(model: torch.nn.Module) -> None:
    """Batch-norm momentum >= 0.1 so running stats follow a short run (docs/NOTES.md, "MobileNetV3 batch norm")."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, 0.1)


def set_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Every dropout layer's rate set to p in training (None: the architecture's own); eval mode ignores it."""
    if p is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = p


class MaskedBCE(torch.nn.Module):
    """BCE-with-logits over every output (B, C), averaged over the labelled targets only: a NaN target (a subtype
    the data does not tell) counts neither as positive nor as negative. 1-D targets are one output."""

    def __init__(self, pos_weight: torch.Tensor):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    @classmethod
    def balanced(cls, targets: torch.Tensor) -> "MaskedBCE":
        """Positives weighted per output by labelled negatives over positives: each output's classes weigh alike."""
        targets = targets.reshape(len(targets), -1)
        positives = targets.nan_to_num(0).sum(0)
        return cls((targets.isfinite().sum(0) - positives) / positives.clamp(min=1))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.reshape(len(targets), -1), targets.reshape(len(targets), -1)
        known = targets.isfinite()
        loss = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0), weight=known.float(),
                                                  pos_weight=self.pos_weight, reduction="sum")
        return loss / known.sum().clamp(min=1)


@dataclass(kw_only=True)
class Training:
    """What an epoch of training steps through (core.engine.fit's Session is one, with more)."""
    cfg: TrainConfig                    # an epoch reads its seed and augment
    device: torch.device
    trainee: torch.nn.Module            # the model in its numerics' format, or its DistributedDataParallel wrapper
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    numerics: Numerics = field(default_factory=Numerics)
    steps_per_epoch: int | None = None  # the loader's first batches an epoch takes; None: all of them


def train_one_epoch(training: Training, epoch: int, desc: str = "") -> dict:
    """One pass over the loader (or its first `steps_per_epoch` batches), in the training's numerics."""
    model, loader, device, cfg = training.trainee, training.loader, training.device, training.cfg
    model.train()
    augment_seed = epoch_seed(cfg.seed, epoch, AUGMENT)
    generator = torch.Generator(device=device).manual_seed(augment_seed) if cfg.augment else None
    torch.manual_seed(epoch_seed(cfg.seed, epoch, DROPOUT))   # the global generator: dropout's
    total_loss, correct, seen, data_wait, compute = 0.0, 0, 0, 0.0, 0.0
    start = time.perf_counter()
    steps = min(training.steps_per_epoch or len(loader), len(loader))
    bar = tqdm(itertools.islice(loader, steps), total=steps, desc=desc, leave=False,
               disable=not is_main() or not sys.stderr.isatty(), unit="batch")
    tick = time.perf_counter()
    for images, labels, *masks in bar:   # masks: (masks, has_mask) where the dataset carries them
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        masks = [m.to(device, non_blocking=True) for m in masks]
        if masks:
            x, masks[0] = to_model_input_and_masks(images, masks[0], IMAGENET_MEAN, IMAGENET_STD, generator=generator)
        else:
            x = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD, generator=generator)
        x = training.numerics.input(x)
        got_data = time.perf_counter()
        targets = labels.reshape(len(labels), -1)   # (B, outputs), NaN where unknown; output 0 is hemorrhage
        with training.numerics.autocast(device):
            logits = model(x).float().reshape(targets.shape)
        loss = training.loss_fn(logits, targets, *masks)
        training.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        training.optimizer.step()
        training.scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += int(((logits[:, 0] > 0).float() == targets[:, 0]).sum())
        seen += len(labels)
        done = time.perf_counter()
        data_wait += got_data - tick
        compute += done - got_data
        tick = done
        bar.set_postfix(img_s=f"{seen / (done - start):.0f}", loss=f"{total_loss / seen:.3f}")
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen), "seconds": seconds,
            "img_per_s": seen / seconds, "data_wait_s": data_wait, "compute_s": compute}


def evaluate(model, images, labels, device, rows=None, numerics: Numerics = Numerics()) -> dict:
    """Validation loss, accuracy and AUC; `rows` as in core.nets.predict.predict_probs (default: every slice)."""
    probs = predict_probs(model, images, IMAGENET_MEAN, IMAGENET_STD, device, rows=rows, numerics=numerics)
    labels = np.asarray(labels, dtype=np.float32)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return {"val_loss": loss, "val_acc": float(np.mean((probs >= 0.5) == labels)), "val_auc": auc_or_nan(labels, probs),
            "probs": probs}
