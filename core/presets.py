"""The embedded default: which synthetic data and how much training, per device."""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.io.atomic import remove_stale_temp_dirs, temp_dir
from core.engine.config import TrainConfig
from core.insert.lesions import PAINTER_VERSION
from core.insert.write import write_painted
from core.phantom.generate import write_dataset
from core.registry import CLASSICAL_NAMES, CNN_NAMES, ENSEMBLE_NAMES, SEQUENCE_NAMES

DATA_CACHE = Path(__file__).resolve().parents[1] / "data"
PAINTED_CACHE = Path(os.environ.get("HEMOLENS_PAINTED", DATA_CACHE / "painted"))
# --synthetic-bleeds (docs/NOTES.md, "Painted bleeds"): painted copies per real normal, their difficulty range,
# and the training flags it defaults to (bleeds of a few mm need more pixels than the phantom demo's 64), measured at
# batch 16. No early stop: the painted validation AUC stalls for epochs while transfer to real bleeds still improves.
# MobileNetV2 transfers better at twice its scratch rate (docs/NOTES.md, "Learning rates and phantom initialisation").
# The two networks measured on external sets, so that the default (two folders, painting included) ends in 30 minutes
# on a 2-core CPU.
PAINTED_COPIES = 2
PAINTED_DIFFICULTY = (0.0, 0.5)
PAINTED_RECIPE = {"image_size": 128, "epochs": 24, "batch_size": 16, "patience": None,
                  "per_model": {"mobilenet_v2": {"lr": 2e-3}}, "models": ("resnet18", "mobilenet_v2")}
# The painted recipe's networks first learn bleeds on phantoms, whose masks are exact, then the painted slices
# (docs/NOTES.md, "Phantom warm-up"): RUN/warmup, a phantom run of the same networks at the same size.
PAINTED_WARMUP = {"phantoms": 1000, "epochs": 10, "epoch_size": 640, "lr": 2e-3}
WARMUP_DIR = "warmup"
PHANTOM_CACHE = Path(os.environ.get("HEMOLENS_PHANTOMS", DATA_CACHE / "phantoms"))
PHANTOM_SIZE = 256
CPU_BUDGET_S = 45   # per network in the CPU demo, unless CPU_RECIPES says otherwise
# Whole CPU demo incl. phantoms; networks shrink when the run falls behind (core.engine.budget).
CPU_RUN_BUDGET_S = 565
# Slowest epochs first: the light networks at the end absorb what the heavy ones overran.
CPU_NETWORK_ORDER = ("vgg16", "vgg16_bn", "resnet50", "xception", "inception_v3", "resnet18", "mobilenet_v2",
                     "mobilenet_v3_large", "alexnet")


@dataclass(frozen=True)
class Preset:
    phantoms: int
    image_size: int | None     # None: each model's native size
    epochs: int
    batch_size: int
    difficulty: tuple[float, float]   # phantom bleed difficulty range (core.phantom)
    models: tuple[str, ...]           # what `python train.py` trains without --models
    time_budget_s: float | None       # per network: epochs cut to those nearest it (core.engine.budget.planned_epochs)
    run_budget_s: float | None = None   # the whole run: networks' budgets shrink to fit it (core.engine.budget)
    per_model: dict = field(default_factory=dict)   # {model: {TrainConfig field: value}} for one model
    augment: bool = True              # the studies' rotation / zoom / flip / jitter of training batches
    epoch_size: int | None = None     # training images an epoch draws (None: the whole training split)
    twins: bool = False               # every phantom head with and without its bleed (core.phantom.write_dataset)
    patience: int | None = TrainConfig.patience   # epochs without a better validation AUC; None: no early stop
    attention: float = TrainConfig.attention      # weight of the mask-attention loss (core.engine.attention)


def demo_preset(device_type: str) -> Preset:
    """Quick on a 2-core CPU (docs/NOTES.md, "CPU demo preset"); native size and sequence models on a GPU."""
    if device_type == "cuda":
        return Preset(phantoms=5000, image_size=None, epochs=10, batch_size=64, difficulty=(0.2, 0.8),
                      models=(*CLASSICAL_NAMES, *CNN_NAMES, *SEQUENCE_NAMES, *ENSEMBLE_NAMES), time_budget_s=None)
    return Preset(phantoms=1200, image_size=64, epochs=8, batch_size=16, difficulty=(0.0, 0.25),
                  models=(*CLASSICAL_NAMES, *CPU_NETWORK_ORDER, *ENSEMBLE_NAMES),
                  time_budget_s=CPU_BUDGET_S, run_budget_s=CPU_RUN_BUDGET_S, per_model=CPU_RECIPES,
                  augment=False, epoch_size=448, twins=True)


# Per-network settings of the CPU demo (docs/NOTES.md, "Per-network CPU recipes").
CPU_RECIPES = {"alexnet": {"head": "gap", "image_size": 128, "epochs": 16, "lr": 3e-4},
               "vgg16": {"head": "gap", "image_size": 64, "time_budget_s": 95, "warmup_epochs": 0.25},
               "vgg16_bn": {"head": "gap", "image_size": 64, "time_budget_s": 70, "warmup_epochs": 0.25},
               "resnet50": {"time_budget_s": 80, "lr": 3e-3},
               "resnet18": {"time_budget_s": 30},
               "mobilenet_v2": {"epochs": 16, "lr": 2e-3},
               "mobilenet_v3_large": {"epochs": 16, "lr": 3e-3},
               "inception_v3": {"lr": 2e-3},
               "xception": {"lr": 3e-3}}


def phantom_root(n: int, seed: int, difficulty: tuple[float, float] = (0.2, 0.8), stack_size: int = 5,
                 twins: bool = False) -> Path:
    """The cached phantom set for (n, seed, difficulty, stack size, twins), generated atomically on first use."""
    lo, hi = difficulty
    name = f"n{n}_s{PHANTOM_SIZE}_seed{seed}_d{lo:g}-{hi:g}_k{stack_size}{'_twins' * twins}"
    return cached_set(PHANTOM_CACHE / name, lambda tmp: write_dataset(
        tmp, n=n, size=PHANTOM_SIZE, seed=seed, stack_size=stack_size, difficulty=difficulty, twins=twins))


def painted_root(data: str | Path, seed: int, copies: int = PAINTED_COPIES,
                 difficulty: tuple[float, float] = PAINTED_DIFFICULTY) -> Path:
    """The cached painted set (core.insert) of a dataset folder's normals; keyed by the folder's files (paths,
    sizes, times), so an edited folder is painted afresh."""
    root = Path(data).expanduser().resolve()
    listing = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f in root.rglob("*") if f.is_file())
    key = hashlib.sha256(repr((str(root), listing)).encode()).hexdigest()[:12]
    lo, hi = difficulty
    name = f"{root.name}-{key}_v{PAINTER_VERSION}_seed{seed}_c{copies}_d{lo:g}-{hi:g}"
    return cached_set(PAINTED_CACHE / name, lambda tmp: write_painted(root, tmp, seed=seed, difficulty=difficulty,
                                                                       copies=copies))


def cached_set(root: Path, write) -> Path:
    """`root`, written by write(temporary folder) and renamed into place on first use; stale temporary folders of
    killed writers are removed first."""
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(root.parent)
    if root.is_dir():
        return root
    tmp = temp_dir(root.parent, root.name)
    write(tmp)
    try:
        tmp.rename(root)
    except OSError:            # another worker finished first: its set is identical (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
    return root
