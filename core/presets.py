"""The embedded default: which synthetic data and how much training, per device."""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.io import store
from core.io.atomic import remove_stale_temp_dirs, temp_dir
from core.engine.config import TrainConfig
from core.evaluate import evaluate_run
from core.insert.lesions import PAINTER_VERSION
from core.insert.write import write_painted
from core.phantom.generate import write_dataset
from core.phantom.scanner import DEFAULT, Scanner
from core.report import write_report
from core.registry import (CLASSICAL_NAMES, CNN_NAMES, ENSEMBLE_NAMES, PAINTED_NETWORKS, REGISTRY, SEQUENCE_NAMES,
                           ModelSpec)

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
                  "per_model": {PAINTED_NETWORKS[1]: {"lr": 2e-3}}, "models": PAINTED_NETWORKS}
# The painted recipe's networks first learn bleeds on phantoms, whose masks are exact, then the painted slices
# (docs/NOTES.md, "Phantom warm-up"): RUN/warmup, a phantom run of the same networks at the same size.
PAINTED_WARMUP = {"phantoms": 1000, "epochs": 10, "epoch_size": 640, "lr": 2e-3}
WARMUP_DIR = "warmup"
PHANTOM_CACHE = Path(os.environ.get("HEMOLENS_PHANTOMS", DATA_CACHE / "phantoms"))
PHANTOM_SIZE = 256
# The phantom demo's external test set (docs/NOTES.md, "Other-scanner phantoms"): fresh heads (the run's seed plus
# OTHER_SCANNER_SEED) imaged as by another scanner, at most this many slices and a third of the run's phantoms.
OTHER_SCANNER_SLICES = 200
OTHER_SCANNER_SEED = 100_000
CPU_BUDGET_S = 45   # per network in the CPU demo, unless CPU_RECIPES says otherwise
# Whole CPU demo incl. phantoms; networks shrink when the run falls behind (core.engine.budget). OTHER_SCANNER_S of
# it are kept for the other-scanner evaluation after the last model (docs/NOTES.md, "Other-scanner phantoms").
CPU_RUN_BUDGET_S = 565
OTHER_SCANNER_S = 40


def cpu_network_order(cnns: list[ModelSpec]) -> tuple[str, ...]:
    """The CPU demo's networks in training order, by each one's cpu_place: slowest epochs first, so that the light
    networks at the end absorb what the heavy ones overran. Every CNN must hold one of the places 1 to n."""
    order = sorted(cnns, key=lambda spec: spec.cpu_place)
    if [spec.cpu_place for spec in order] != list(range(1, len(order) + 1)):
        raise ValueError(f"the registry's CNNs need the CPU demo places 1 to {len(order)}, one each; they have "
                         + ", ".join(f"{spec.name} {spec.cpu_place}" for spec in order))
    return tuple(spec.name for spec in order)


CPU_NETWORK_ORDER = cpu_network_order([REGISTRY[name] for name in CNN_NAMES])   # every registry CNN


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
                  time_budget_s=CPU_BUDGET_S, run_budget_s=CPU_RUN_BUDGET_S - OTHER_SCANNER_S, per_model=CPU_RECIPES,
                  augment=False, epoch_size=448, twins=True)


# Per-network settings of the CPU demo, each CNN's registry cpu_recipe (docs/NOTES.md, "Per-network CPU recipes").
CPU_RECIPES = {name: dict(REGISTRY[name].cpu_recipe) for name in CPU_NETWORK_ORDER}


def phantom_root(n: int, seed: int, difficulty: tuple[float, float] = (0.2, 0.8), stack_size: int = 5,
                 twins: bool = False, scanner: Scanner = DEFAULT) -> Path:
    """The cached phantom set for (n, seed, difficulty, stack size, twins, scanner), generated atomically on first
    use. Another scanner's set is a folder named `scanner.set_name` (so are its stored evaluations) inside one keyed
    by its settings."""
    lo, hi = difficulty
    root = PHANTOM_CACHE / f"n{n}_s{PHANTOM_SIZE}_seed{seed}_d{lo:g}-{hi:g}_k{stack_size}{'_twins' * twins}"
    if scanner != DEFAULT:
        key = hashlib.sha256(repr(scanner).encode()).hexdigest()[:8]
        root = root.with_name(f"{root.name}_{scanner.name}-{key}") / scanner.set_name
    return cached_set(root, lambda tmp: write_dataset(tmp, n=n, size=PHANTOM_SIZE, seed=seed, stack_size=stack_size,
                                                      difficulty=difficulty, twins=twins, scanner=scanner))


def evaluate_other_scanner(run_dir: str | Path, data: Path, device: str = "cpu") -> str | None:
    """The phantom demo's lesson in external validation: the finished run evaluated on `data` (phantom_root's
    OTHER set) and stored with it (core.io.store.store_evaluation), where the dashboard's Dataset selector and
    internal-vs-external table find it. An evaluation stored after the run's last card is kept; an older one is
    replaced. Returns the gap in one line; None where the stored one was kept."""
    run_dir = Path(run_dir)
    stored = run_dir / store.EVALUATIONS / store.evaluation_name(data)
    cards = {m: store.load_card(run_dir / m) for m in store.list_models(run_dir)}
    newest = max(((run_dir / m / store.CARD).stat().st_mtime for m in cards), default=0.0)
    if (stored / "report.json").is_file() and (stored / "report.json").stat().st_mtime >= newest:
        return None
    # No bootstrap: the dashboard bootstraps its own intervals from predictions.csv; here 1,000 resamples a model
    # would take the demo longer than the evaluation itself.
    report = evaluate_run(run_dir, str(data), bootstrap=0, device=device)
    shutil.rmtree(stored, ignore_errors=True)   # this set's own evaluation, of models since retrained
    where = store.store_evaluation(run_dir, data, lambda tmp: write_report(report, tmp))
    drops = np.array([cards[m]["metrics"]["test"]["roc_auc"] for m in report["models"]], float) - np.array(
        [r["metrics"]["default"]["roc_auc"] for r in report["models"].values()], float)
    drops = drops[~np.isnan(drops)]   # a model without an AUC on one of the sets (a class missing)
    gap = (f"median AUC drop from the test split {np.median(drops):.3f} ({drops.min():.3f} to {drops.max():.3f}, "
           f"{len(drops)} models)" if len(drops) else "no model has an AUC on both sets")
    return f"{report['n_cases']} slices, {gap}; stored in {where}"


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
