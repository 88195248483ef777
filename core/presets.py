"""The embedded default: which synthetic data and how much training, per device."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PHANTOM_CACHE = Path(os.environ.get("HEMOLENS_PHANTOMS", Path(__file__).resolve().parents[1] / "data" / "phantoms"))
PHANTOM_SIZE = 256
CPU_BUDGET_S = 45   # per network in the CPU demo: nine CNNs, then the classical models, in ~10 minutes


@dataclass(frozen=True)
class Preset:
    phantoms: int
    image_size: int | None     # None: each model's native size
    epochs: int
    batch_size: int
    difficulty: tuple[float, float]   # phantom bleed difficulty range (core.phantom)
    models: tuple[str, ...]           # what `python train.py` trains without --models
    time_budget_s: float | None       # per network: epochs are cut to what fits (core.training.planned_epochs)
    per_model: dict = field(default_factory=dict)   # {model: {TrainConfig field: value}} for one model


def demo_preset(device_type: str) -> Preset:
    """Quick on a 2-core CPU; native resolution, the full difficulty range and more data on a GPU.

    On a CPU the budget is ~10 minutes for nine CNNs trained from scratch, at 64 px. There a thin
    subdural or a few subarachnoid lines of the harder phantoms are a pixel or two wide, and with a
    few hundred optimizer steps the plain networks (AlexNet, VGG-16) stayed at or near chance. The
    CPU demo therefore draws its bleeds from the easiest quarter of the difficulty range (large,
    dense bleeds a radiologist would call obvious), uses batch 16 (twice the optimizer steps for the
    same compute) and gives each network a time budget: after its first epoch it runs only as many
    epochs as fit (at least 2). The sequence models (5 slices a prediction) are GPU-preset only.
    Phantom stacks are written only for sequence models (train.py): otherwise every slice is its
    own head, 600 independent heads rather than 120 stacks of 5 near-identical slices."""
    from core.models import CLASSICAL_NAMES, CNN_NAMES, SEQUENCE_NAMES

    if device_type == "cuda":
        return Preset(phantoms=5000, image_size=None, epochs=10, batch_size=64, difficulty=(0.2, 0.8),
                      models=(*CNN_NAMES, *SEQUENCE_NAMES, *CLASSICAL_NAMES, "ensemble_soft", "ensemble_stack"),
                      time_budget_s=None)
    return Preset(phantoms=600, image_size=64, epochs=8, batch_size=16, difficulty=(0.0, 0.25),
                  models=(*CNN_NAMES, *CLASSICAL_NAMES, "ensemble_soft", "ensemble_stack"),
                  time_budget_s=CPU_BUDGET_S, per_model=CPU_VGG_RECIPE)


# The VGGs' three linear layers hold 120 M of their 138 M weights and cost ~0.4 s a step on 2 cores at
# any input size: a VGG-16 step (batch 16) is 0.73 s at 32 px and 1.28 s at 64 px. From scratch,
# VGG-16 needed ~150 steps before its loss left ln 2, over three minutes at 64 px. At 32 px (its
# smallest input), with a short warm-up and He init (core.models.he_fan_in_init), five or six
# epochs fit in ~2 minutes; VGG-16-BN at 32 px gets 3 epochs for less than 2 cost at 64 px.
CPU_VGG_RECIPE = {"vgg16": {"image_size": 32, "time_budget_s": 125, "warmup_epochs": 0.25},
                  "vgg16_bn": {"image_size": 32, "time_budget_s": 70, "warmup_epochs": 0.25}}


def phantom_root(n: int, seed: int, difficulty: tuple[float, float] = (0.2, 0.8), stack_size: int = 5) -> Path:
    """The cached phantom set for (n, seed, difficulty, stack size), generated on first use.

    Generated into a temporary folder and renamed into place, so concurrent torchrun workers and
    killed runs never see a half-written set."""
    from core.phantom import write_dataset

    lo, hi = difficulty
    root = PHANTOM_CACHE / f"n{n}_s{PHANTOM_SIZE}_seed{seed}_d{lo:g}-{hi:g}_k{stack_size}"
    if root.is_dir():
        return root
    PHANTOM_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=PHANTOM_CACHE))
    write_dataset(tmp, n=n, size=PHANTOM_SIZE, seed=seed, stack_size=stack_size, difficulty=difficulty)
    try:
        tmp.rename(root)
    except OSError:            # another worker finished first: its set is identical (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
    return root
