"""The training engine: plain train_one_epoch / evaluate functions, one model at a time.

One engine for slices and stacks: what a model sees is given by `rows`, index rows into the decoded
slices: (N,) for a CNN (one slice per prediction), (N, K) for a sequence model (the stack around
each slice, core.sequence.stack_indices). Labels, splits and predictions stay one per manifest row.

CPU and GPU share one path: the decoded uint8 set lives on the training device and batches are
augmented there. On CUDA: bf16 autocast and channels_last. Under torchrun: DistributedDataParallel
(nccl on GPU, gloo on CPU); rank 0 alone writes files.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from core import checkpoints as ckpt
from core.datasets import SliceDataset, to_model_input
from core.latency import measure_latency
from core.metrics import auc_or_nan, card_metrics
from core.models import IMAGENET_MEAN, IMAGENET_STD, REGISTRY, count_gmacs, count_params, create_model
from core.predict import predict_probs
from core.run_budget import RunBudget
from core.splits import Prepared


RESUME_SAVE_RATIO = 4.0   # train at least 4x as long as the last resume-state write took before the next
CUDNN_AUTOTUNE_MIN_STEPS = 4000   # planned optimizer steps from which cuDNN autotuning pays back (fit_model)


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
    augment: bool = True                # rotation, zoom, flip and jitter of training batches (core.datasets)
    epoch_size: int | None = None       # training images per epoch, a fresh random draw each epoch; None: all
    patience: int = 4                   # epochs without a better validation AUC before stopping
    time_budget_s: float | None = None  # per model: fewer epochs where the first one shows `epochs` won't fit
    run_budget_s: float | None = None   # whole run: networks' budgets shrink to their share (core.run_budget)
    device: str = "auto"
    seed: int = 0
    pretrained: bool = False
    weights_dir: str | None = None
    resume: bool = False
    data: str | None = None
    sequence_backbone: str = "resnet18"  # the registry CNN a sequence model encodes slices with
    stack_size: int = 5                 # slices per stack, the predicted one in the middle
    per_model: dict = field(default_factory=dict)   # {model: {field: value}} replacing the above for one model
    args: dict = field(default_factory=dict)   # the command line as given, recorded in cards


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("hemolens: --device cuda was asked for but no CUDA GPU is visible.")
    return torch.device(name)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _short_run_batch_norm(model: torch.nn.Module) -> None:
    """torchvision's MobileNetV3 keeps batch-norm running statistics with momentum 0.01, tuned for
    600-epoch ImageNet runs. After the few hundred steps of a run here its eval-mode statistics were
    still the initial ones and every slice got the same score (validation AUC exactly 0.500 at any
    learning rate). PyTorch's default 0.1 lets them follow the data."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.momentum is not None:
            module.momentum = max(module.momentum, 0.1)


def planned_epochs(cfg: TrainConfig, first_epoch_s: float) -> int:
    """Epochs to run once the first one is timed: cfg.epochs, or the whole number nearest the time
    budget (at least 2, so the schedule gets past its warm-up). Nearest, not as many as fit: rounding
    down left a run budget's networks half an epoch short each on average (the CPU demo ended 36 s
    under its budget with ResNet-50 at 2 epochs of the 2.9 its share held). A pure function of the
    first epoch, so a resumed run plans exactly as the killed one did."""
    if cfg.time_budget_s is None:
        return cfg.epochs
    return int(min(cfg.epochs, max(2, math.floor(cfg.time_budget_s / max(first_epoch_s, 1e-9) + 0.5))))


def train_one_epoch(model, loader, optimizer, scheduler, loss_fn, device, epoch: int, seed: int,
                    desc: str = "", amp: bool | None = None, augment: bool = True, steps: int | None = None) -> dict:
    """One pass over the loader, or its first `steps` batches (a shuffling sampler makes them a fresh
    random draw each epoch). `amp` (bf16 autocast + channels_last) defaults to on for CUDA."""
    model.train()
    # Augmentation and dropout are seeded per epoch, so a resumed run replays the same epochs.
    gen = torch.Generator(device=device).manual_seed(seed * 10_007 + epoch)
    torch.manual_seed(seed * 10_007 + epoch)
    amp = device.type == "cuda" if amp is None else amp
    total_loss, correct, seen, data_wait, compute = 0.0, 0, 0, 0.0, 0.0
    start = time.perf_counter()
    steps = len(loader) if steps is None else min(steps, len(loader))
    # A whole epoch runs the loader to its end: that also advances the sampler's generator as before.
    batches = loader if steps == len(loader) else itertools.islice(loader, steps)
    bar = tqdm(batches, total=steps, desc=desc, leave=False,
               disable=not is_main() or not sys.stderr.isatty(), unit="batch")
    tick = time.perf_counter()
    for images, labels in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        x = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD, generator=gen if augment else None)
        if amp and x.ndim == 4:   # stacks (5-D) stay contiguous: convolutions follow the channels_last weights
            x = x.contiguous(memory_format=torch.channels_last)
        got_data = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float().flatten()
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += int(((logits > 0).float() == labels).sum())
        seen += len(labels)
        done = time.perf_counter()
        data_wait += got_data - tick
        compute += done - got_data
        tick = done
        bar.set_postfix(img_s=f"{seen / (done - start):.0f}", loss=f"{total_loss / seen:.3f}")
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen), "seconds": seconds,
            "img_per_s": seen / seconds, "data_wait_s": data_wait, "compute_s": compute}


def evaluate(model, images, labels, device, rows=None) -> dict:
    """Validation loss, accuracy and AUC; `rows` as in core.predict.predict_probs (default: every slice)."""
    probs = predict_probs(model, images, IMAGENET_MEAN, IMAGENET_STD, device, rows=rows)
    labels = np.asarray(labels, dtype=np.float32)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return {"val_loss": loss, "val_acc": float(np.mean((probs >= 0.5) == labels)), "val_auc": auc_or_nan(labels, probs),
            "probs": probs}


def _agree(value: float, device) -> float:
    """Rank 0's number, on every rank: early stopping must not diverge between DDP workers."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return float(t.item())


def fit_model(name: str, data: Prepared, cfg: TrainConfig, run_dir: Path, device: torch.device,
              rows: np.ndarray | None = None, architecture: dict | None = None) -> dict:
    """Train one registry model on a prepared split and write its folder; returns its card.

    rows: what the model sees per manifest row, (N,) slices (default) or (N, K) stacks.
    architecture: create_model's choices for the model (a sequence model's backbone and stack size)."""
    architecture = architecture or {}
    rows = np.arange(len(data.manifest)) if rows is None else rows
    model_dir = run_dir / name
    split = data.manifest["split"].to_numpy()
    labels = data.manifest["label"].to_numpy()
    part = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    on_device = device if device.type == "cuda" else torch.device("cpu")
    train_ds = SliceDataset(data.images, labels[part["train"]], on_device, rows=rows[part["train"]])

    # Seeded here, per model: otherwise a model's random init would follow from how many epochs the
    # model before it ran (train_one_epoch reseeds per epoch), which the time budget decides.
    torch.manual_seed(cfg.seed)
    model = create_model(name, pretrained=cfg.pretrained, weights_dir=cfg.weights_dir, **architecture).to(device)
    pretrained_loaded = bool(getattr(model, "pretrained_loaded", False))
    if not pretrained_loaded and REGISTRY[name].scratch_init:
        REGISTRY[name].scratch_init(model)
    _short_run_batch_norm(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # From scratch, the rate that suits the convolutional trunk (a sequence model's backbone).
    lr = cfg.lr or (3e-4 if pretrained_loaded else REGISTRY[architecture.get("backbone", name)].scratch_lr)
    # fused: one kernel over all parameters. PyTorch's CPU default is a Python loop per tensor, and on
    # the 57 M (AlexNet) to 138 M (VGG) parameters of these heads the step outweighed the forward and
    # backward passes at 64 px (921 ms vs 151 ms a step for AlexNet on 2 cores).
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True)
    world = dist.get_world_size() if dist.is_initialized() else 1
    sampler = (DistributedSampler(train_ds, shuffle=True, seed=cfg.seed) if world > 1
               else RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed)))
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=SliceDataset.collate,
                        drop_last=len(train_ds) // world > cfg.batch_size)   # BatchNorm dislikes a batch of 1
    # An epoch of epoch_size images (DDP: across all ranks) keeps time budgets and validation at the
    # same granularity on a larger training split: more distinct images for the same optimizer steps.
    steps_per_epoch = (len(loader) if not cfg.epoch_size
                       else min(len(loader), max(1, cfg.epoch_size // (cfg.batch_size * world))))
    # cuDNN autotuning times every algorithm for each new layer shape. On an H100 it cost 7-27 s in
    # the first epoch (MobileNetV2 at 224 px, batch 64: 36 s vs 9 s) and saved at most ~8 ms a step
    # afterwards (MobileNetV2; nothing on ResNet-50 or Xception), so it pays only on long runs.
    torch.backends.cudnn.benchmark = steps_per_epoch * cfg.epochs >= CUDNN_AUTOTUNE_MIN_STEPS
    epochs = [cfg.epochs]   # re-planned after the first epoch under a time budget; the schedule follows
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, max(1, int(cfg.warmup_epochs * steps_per_epoch)), epochs[0] * steps_per_epoch))
    n_pos = max(1, int(labels[part["train"]].sum()))
    pos_weight = torch.tensor((len(part["train"]) - n_pos) / n_pos, device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    history, best_auc, best_state, start_epoch, stale = [], -1.0, None, 1, 0
    save_cost, unsaved = 0.0, 0.0
    resumed = ckpt.load_resume_state(model_dir) if cfg.resume else None
    if resumed is not None:
        model_state, opt_state, best_state, meta = resumed
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        history, best_auc, stale = meta["history"], meta["best_auc"], meta["stale"]
        # The budget the killed run was given (under a run budget it depended on the clock then).
        cfg = replace(cfg, time_budget_s=meta.get("time_budget_s", cfg.time_budget_s))
        start_epoch = meta["epoch"] + 1
        scheduler.last_epoch = meta["epoch"] * steps_per_epoch   # the schedule is a pure function of the step
        if is_main():
            print(f"{name}: resuming after epoch {meta['epoch']}", flush=True)
    trainee = DistributedDataParallel(model) if world > 1 else model
    started = time.perf_counter() - sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if history:
            epochs[0] = planned_epochs(cfg, _agree(history[0]["wall_s"], device))
        if epoch > epochs[0]:
            break
        epoch_start = time.perf_counter()
        if world > 1:
            sampler.set_epoch(epoch)
        stats = train_one_epoch(trainee, loader, optimizer, scheduler, loss_fn, device, epoch, cfg.seed,
                                desc=f"{name} {epoch}/{epochs[0]}", augment=cfg.augment, steps=steps_per_epoch)
        val = evaluate(model, data.images, labels[part["val"]], device, rows=rows[part["val"]])
        val_auc = _agree(val["val_auc"], device)
        row = {"epoch": epoch, **{k: v for k, v in stats.items()}, **{k: val[k] for k in ("val_loss", "val_acc")},
               "val_auc": val_auc, "lr": scheduler.get_last_lr()[0],
               "wall_s": time.perf_counter() - epoch_start}   # training and validation: what a budget pays
        history.append(row)
        improved = not val_auc <= best_auc   # NaN AUC (one-class val) counts as improvement: keep last
        if improved:
            best_auc, stale = val_auc, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if is_main():
            print(f"{name} epoch {epoch}/{epochs[0]}: loss {row['train_loss']:.3f} val_auc {val_auc:.3f} "
                  f"{row['img_per_s']:.0f} img/s (data wait {row['data_wait_s']:.1f}s of {row['seconds']:.1f}s)",
                  flush=True)
            unsaved += row["seconds"]
            # A resume state is model + best + two Adam moments: 2 GB for VGG-16, which took longer to
            # write and hash than an epoch on a GPU. It is written once the training it would save has
            # cost RESUME_SAVE_RATIO times what the last write cost (so <= ~1/ratio overhead); small
            # models are saved every epoch. None follows the last epoch: it would protect only the
            # seconds of _finish (a kill there replays that epoch), and cost VGG-16 7.6 s on 2 cores.
            last = stale >= cfg.patience or epoch >= epochs[0]
            if not last and unsaved >= RESUME_SAVE_RATIO * save_cost:
                tick = time.perf_counter()
                ckpt.save_resume_state(model_dir, model.state_dict(), optimizer.state_dict(), best_state,
                                       {"epoch": epoch, "history": history, "best_auc": best_auc, "stale": stale,
                                        "time_budget_s": cfg.time_budget_s})
                save_cost, unsaved = time.perf_counter() - tick, 0.0
        if stale >= cfg.patience:
            break
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    if not is_main():
        return {}
    return _finish(name, model, data, cfg, model_dir, device, history, train_seconds, pretrained_loaded, part,
                   rows, architecture)


def _finish(name, model, data: Prepared, cfg, model_dir, device, history, train_seconds, pretrained_loaded,
            part, rows, architecture) -> dict:
    """Predictions on val and test, thresholds picked on val, latency, and the card."""
    spec = REGISTRY[name]
    man = data.manifest
    tables, probs = [], {}
    for split in ("val", "test"):
        idx = part[split]
        probs[split] = predict_probs(model, data.images, IMAGENET_MEAN, IMAGENET_STD, device, rows=rows[idx])
        tables.append(man.iloc[idx].assign(split=split, prob=probs[split]))
    predictions = pd.concat(tables, ignore_index=True)
    y = {s: man["label"].to_numpy()[part[s]] for s in ("val", "test")}
    size = data.image_size
    stack_size = rows.shape[1] if rows.ndim == 2 else None
    if stack_size:   # one prediction reads a whole stack
        from core.sequence import count_stack_gmacs as gmacs_of
    else:
        gmacs_of = count_gmacs
    card = {
        "model": name, "display_name": spec.display_name, "family": spec.family, "reference": spec.reference,
        "classes": ["normal", "hemorrhage"], "input_size": size, "native_input_size": spec.input_size,
        "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "window": "brain", "channels": "grey replicated to 3",
        "resize_policy": data.resize_policy,
        **card_metrics(y["val"], probs["val"], y["test"], probs["test"]),
        **({"architecture": architecture} if architecture else {}),
        "params": count_params(model), "gmacs": gmacs_of(model, size),
        "gmacs_native": gmacs_of(model, spec.input_size),
        "latency": measure_latency(model, size, device, stack_size=stack_size),
        "training": {"epochs": len(history), "epochs_planned": planned_epochs(cfg, history[0]["wall_s"]),
                     "time_budget_s": cfg.time_budget_s,   # under a run budget: the share it was given
                     "run_budget_s": cfg.run_budget_s,
                     "seconds": train_seconds, "augment": cfg.augment,
                     "epoch_size": cfg.epoch_size,   # None: every epoch was the whole training split
                     "recipe": cfg.per_model.get(name, {}),   # the preset's settings for this model alone
                     "device": str(device), "pretrained": pretrained_loaded, "seed": cfg.seed,
                     "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                     "best_val_auc": max((h["val_auc"] for h in history), default=None),
                     "args": cfg.args or asdict(cfg)},
        "dataset": dataset_facts(cfg, man, part),
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model.to("cpu")
    card = ckpt.save_model(model_dir, model.state_dict(), card,
                           pd.DataFrame(history)[ckpt.HISTORY_COLUMNS], predictions)
    ckpt.clear_resume_state(model_dir)
    return card


def dataset_facts(cfg: TrainConfig, manifest: pd.DataFrame, part: dict[str, np.ndarray]) -> dict:
    """The card's "dataset": where the data came from and images / hemorrhages per split."""
    labels = manifest["label"].to_numpy()
    return {"source": cfg.data or "synthetic phantoms",
            "counts": {s: {"n": int(len(part[s])), "hemorrhage": int(labels[part[s]].sum())}
                       for s in ("train", "val", "test")}}


def versions() -> dict:
    import platform

    import sklearn
    import timm
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "scikit-learn": sklearn.__version__,
            "hemolens_schema": ckpt.SCHEMA_VERSION}


def trainer_of(family: str):
    """fit(name, prepared, cfg, run_dir, device) -> card, for every family trained on images."""
    if family == "sequence":
        from core.sequence import fit_sequence
        return fit_sequence
    if family == "classical":
        from core.classical import fit_classical
        return fit_classical
    return fit_model


def _setup_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def train_run(cfg: TrainConfig, data_root: str | Path, prepare_fn, started: float | None = None) -> dict[str, dict]:
    """Train every model of cfg on one dataset; returns {model: card}. `prepare_fn(size)` gives the
    Prepared split at one image size (cached per size, so native-size runs decode once per size).
    started: the time.perf_counter() from which cfg.run_budget_s counts (default: now)."""
    device = resolve_device(cfg.device)
    _setup_distributed(device)
    if device.type == "cuda" and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    run_dir = Path(cfg.out)
    prepared: dict[int, Prepared] = {}
    cards = {}
    ensembles = [m for m in cfg.models if REGISTRY[m].family == "ensemble"]
    own_cfg = {m: replace(cfg, **cfg.per_model.get(m, {})) for m in cfg.models}   # e.g. the CPU demo's VGG input
    # Networks train in epochs that time budgets can cut; the classical models fit once.
    networks = [m for m in cfg.models if REGISTRY[m].family in ("cnn", "sequence")
                and not (cfg.resume and (run_dir / m / ckpt.CARD).is_file())]
    budget = RunBudget(cfg.run_budget_s, time.perf_counter() if started is None else started) \
        if cfg.run_budget_s else None
    for name in [m for m in cfg.models if m not in ensembles]:
        spec = REGISTRY[name]
        model_cfg, tick = own_cfg[name], time.perf_counter()
        size = max(model_cfg.image_size or spec.input_size, spec.min_input_size)
        if is_main() and size != (model_cfg.image_size or spec.input_size):
            print(f"{name}: trained at {size} px, the smallest input it accepts", flush=True)
        if size not in prepared:
            prepared[size] = prepare_fn(size)
            _check_split(prepared[size], run_dir, resume=cfg.resume)
            if is_main():
                ckpt.write_json(run_dir / "run.json", {"data_root": str(Path(data_root).resolve()),
                                                       "synthetic": cfg.data is None, "seed": cfg.seed})
        if cfg.resume and (run_dir / name / ckpt.CARD).is_file():
            if is_main():
                print(f"{name}: already complete in {run_dir}, skipped", flush=True)
            cards[name] = ckpt.load_card(run_dir / name)
            continue
        if budget and name in networks:
            later = networks[networks.index(name):]
            share = _agree(budget.share(model_cfg.time_budget_s, [own_cfg[m].time_budget_s for m in later]), device)
            if is_main() and share < (model_cfg.time_budget_s or math.inf):
                print(f"{name}: {share:.0f} s of training instead of {model_cfg.time_budget_s or 'unlimited'}, "
                      f"to end the run within its {cfg.run_budget_s:.0f} s", flush=True)
            model_cfg = replace(model_cfg, time_budget_s=share)
        cards[name] = trainer_of(spec.family)(name, prepared[size], model_cfg, run_dir, device)
        if budget and name in networks and cards[name]:
            budget.record(time.perf_counter() - tick, cards[name]["training"]["seconds"])
        if dist.is_initialized():
            dist.barrier()
    if ensembles and is_main():
        from core.ensemble import EnsembleError, fit_ensemble   # combines the saved predictions above
        for name in ensembles:
            try:
                cards[name] = fit_ensemble(name, run_dir)
            except EnsembleError as err:   # e.g. a validation split too small to cross-validate a stack
                print(f"hemolens: {name} skipped: {err}", file=sys.stderr, flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return cards


def _check_split(data: Prepared, run_dir: Path, resume: bool) -> None:
    """Write split.csv, or on --resume check that the data still splits exactly as before."""
    path = run_dir / ckpt.SPLIT
    if resume and path.is_file():
        from core.splits import read_manifest
        old = read_manifest(path)
        same = old[["sha256", "split"]].reset_index(drop=True).equals(
            data.manifest[["sha256", "split"]].reset_index(drop=True))
        if not same:
            raise SystemExit(f"hemolens: {run_dir} was split from different data; resume with the same --data "
                             "and --seed, or start a new --out.")
        return
    if is_main():
        from core.splits import write_manifest
        write_manifest(data.manifest, path)
        ckpt.write_json(run_dir / "leakage.json", data.leakage)
