"""Fitting one network: set-up, resume, epoch loop, save policy and run folder; rank 0 alone writes under DDP."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from core.data.decode import SliceDataset, channels_first, to_model_input
from core.data.splits import Prepared, subtype_targets
from core.data.truth import stored_masks
from core.engine.attention import MaskAttentionLoss
from core.engine.budget import planned_epochs
from core.engine.cards import (add_subtype_metrics, dataset_facts, history_frame, input_windows, model_card,
                               predictions_frame, scan_keys, split_parts)
from core.engine.config import TrainConfig, agree, is_main, world_size
from core.engine.init import starting_weights
from core.engine.loop import (MaskedBCE, Training, evaluate, lr_factor, set_dropout, short_run_batch_norm,
                              train_one_epoch)
from core.io.weights import clear_resume_state, load_resume_state, save_model, save_resume_state
from core.explain.cam import DEFAULT_TOLERANCE_PX, TOLERANCE_SIDE, cam_layer_on_truth
from core.nets.build import cam_sides, choose_cam_layers, create_model, init_from_scratch
from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
from core.nets.measure import count_gmacs, count_params, measure_latency
from core.nets.numerics import NAMES as NUMERICS, Numerics, choose_numerics
from core.nets.predict import predict_outputs
from core.registry import ModelSpec, get_spec

RESUME_SAVE_RATIO = 4.0   # train at least 4x as long as the last resume-state write took before the next
# A network budgeted below this redoes its training sooner than it writes resume states (docs/NOTES.md, "Resume writes").
RESUME_MIN_BUDGET_S = 120.0
CUDNN_AUTOTUNE_MIN_STEPS = 4000   # planned optimizer steps from which cuDNN autotuning pays back


@dataclass(kw_only=True)
class Session(Training):
    """Everything one network's training holds: what its epochs step through, and the rest."""
    spec: ModelSpec
    model: torch.nn.Module
    plan: list[int]                     # [epochs to run], re-planned after every epoch
    pretrained_loaded: bool
    numerics_record: dict               # the card's training.numerics: choice and timings

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Progress:
    """Where training stands after the last completed epoch (what a resume state restores)."""
    history: list[dict] = field(default_factory=list)
    best_auc: float = -1.0
    best_state: dict | None = None
    stale: int = 0                      # epochs since the best validation AUC
    epoch: int = 0

    def record(self, row: dict, model: torch.nn.Module) -> None:
        self.history.append(row)
        self.epoch = row["epoch"]
        if not row["val_auc"] <= self.best_auc:   # NaN AUC (one-class val) counts as improvement: keep last
            self.best_auc, self.stale = row["val_auc"], 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1


def build_model(spec: ModelSpec, cfg: TrainConfig, device: torch.device, architecture: dict) -> torch.nn.Module:
    """The network seeded per model (init independent of earlier models), re-initialised for scratch training."""
    torch.manual_seed(cfg.seed)
    model = create_model(spec, pretrained=cfg.pretrained, weights_dir=cfg.weights_dir, num_outputs=len(cfg.outputs),
                         **architecture).to(device)
    model.pretrained_loaded = bool(getattr(model, "pretrained_loaded", False))
    if cfg.init_from:   # verified against this network before the run began (core.engine.init.check_init_from)
        start = starting_weights(cfg.init_from, spec.name, cfg, architecture)
        model.load_state_dict(start.state)
        model.init_from = start.source
    elif not model.pretrained_loaded:
        init_from_scratch(model)
    short_run_batch_norm(model)
    set_dropout(model, cfg.dropout)
    return model


def build_session(spec: ModelSpec, train_ds: SliceDataset, cfg: TrainConfig, device: torch.device,
                  architecture: dict) -> Session:
    """Model, optimizer, loader and schedule of one network's training."""
    model = build_model(spec, cfg, device, architecture)
    numerics, numerics_record = pick_numerics(spec.name, model, train_ds, cfg, device, architecture)
    model = numerics.model(model)
    # From scratch: the rate suiting the convolutional trunk (a sequence model's backbone, named in its architecture).
    trunk = get_spec(architecture["backbone"]) if "backbone" in architecture else spec
    lr = cfg.lr or (3e-4 if model.pretrained_loaded else trunk.scratch_lr)
    # fused: one kernel over all parameters, not a Python loop per tensor (docs/NOTES.md, "Fused AdamW").
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True)
    world = world_size()
    # Each epoch's order (and so its epoch_size draw) comes from seed + epoch alone, on one process as under
    # DDP: a resumed run draws what the uninterrupted one did, with no generator state to save.
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=None if world > 1 else 0, shuffle=True,
                                 seed=cfg.seed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=SliceDataset.collate,
                        drop_last=len(train_ds) // world > cfg.batch_size)   # BatchNorm dislikes a batch of 1
    # Fixed epoch_size keeps budget and validation granularity on larger splits.
    steps = (len(loader) if not cfg.epoch_size
             else min(len(loader), max(1, cfg.epoch_size // (cfg.batch_size * world))))
    # Autotuning times every algorithm for each new layer shape: it pays only on long runs.
    torch.backends.cudnn.benchmark = steps * cfg.epochs >= CUDNN_AUTOTUNE_MIN_STEPS
    plan = [cfg.epochs]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, max(1, int(cfg.warmup_epochs * steps)), plan[0] * steps))
    loss_fn = MaskedBCE.balanced(train_ds.labels)
    if train_ds.masks is not None:   # masks are carried only for the attention loss (training_masks)
        loss_fn = MaskAttentionLoss(loss_fn, model, int(train_ds.images.shape[-1]), cfg.attention)
    loss_fn = loss_fn.to(device)
    trainee = DistributedDataParallel(model) if world > 1 else model
    return Session(spec=spec, cfg=cfg, device=device, model=model, trainee=trainee, optimizer=optimizer,
                   scheduler=scheduler, loader=loader, loss_fn=loss_fn, steps_per_epoch=steps, plan=plan,
                   pretrained_loaded=model.pretrained_loaded, numerics=numerics, numerics_record=numerics_record)


def pick_numerics(name: str, model: torch.nn.Module, train_ds: SliceDataset, cfg: TrainConfig,
                  device: torch.device, architecture: dict) -> tuple[Numerics, dict]:
    """cfg.numerics, or with "auto" the fastest on this machine timed on a real training batch; every DDP
    rank takes rank 0's choice."""
    if cfg.numerics != "auto":
        return Numerics(cfg.numerics), {"choice": cfg.numerics, "asked": True}
    images, labels, *_ = train_ds.__getitems__(list(range(min(cfg.batch_size, len(train_ds)))))
    x = to_model_input(images.to(device), IMAGENET_MEAN, IMAGENET_STD)
    numerics, record = choose_numerics(model, x, labels.to(device).nan_to_num(0), device, key=f"{name} {sorted(architecture.items())}")
    chosen = NUMERICS[int(agree(NUMERICS.index(numerics.name), device))]
    return Numerics(chosen), {**record, "choice": chosen}


def resume(session: Session, model_dir: Path) -> Progress:
    """The progress of a killed run's last saved epoch, loaded into the session; fresh if none."""
    resumed = load_resume_state(model_dir)
    if resumed is None:
        return Progress()
    model_state, opt_state, best_state, meta = resumed
    session.model.load_state_dict(model_state)
    session.optimizer.load_state_dict(opt_state)
    # The budget the killed run was given (under a run budget it depended on the clock then).
    session.cfg = replace(session.cfg, time_budget_s=meta.get("time_budget_s", session.cfg.time_budget_s))
    session.scheduler.last_epoch = meta["epoch"] * session.steps_per_epoch   # a pure function of the step
    if is_main():
        print(f"{session.name}: resuming after epoch {meta['epoch']}", flush=True)
    return Progress(meta["history"], meta["best_auc"], best_state, meta["stale"], meta["epoch"])


class ResumeSaver:
    """Writes a resume state once unsaved training is RESUME_SAVE_RATIO x last write (docs/NOTES.md, "Resume writes")."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.cost, self.unsaved = model_dir, 0.0, 0.0

    def after_epoch(self, session: Session, progress: Progress, last: bool) -> float:
        """Seconds spent writing (0.0 if nothing was due)."""
        self.unsaved += progress.history[-1]["seconds"]
        budget = session.cfg.time_budget_s
        if last or self.unsaved < RESUME_SAVE_RATIO * self.cost or (budget and budget < RESUME_MIN_BUDGET_S):
            return 0.0
        tick = time.perf_counter()
        save_resume_state(self.model_dir, session.model.state_dict(), session.optimizer.state_dict(),
                                progress.best_state,
                                {"epoch": progress.epoch, "history": progress.history, "best_auc": progress.best_auc,
                                 "stale": progress.stale, "time_budget_s": session.cfg.time_budget_s})
        self.cost, self.unsaved = time.perf_counter() - tick, 0.0
        return self.cost


def train_epoch(session: Session, data: Prepared, val_labels: np.ndarray, val_rows: np.ndarray,
                epoch: int) -> dict:
    """One epoch and its validation: the history row."""
    cfg, start = session.cfg, time.perf_counter()
    session.loader.sampler.set_epoch(epoch)
    stats = train_one_epoch(session, epoch, desc=f"{session.name} {epoch}/{session.plan[0]}")
    val = evaluate(session.model, data.images, val_labels, session.device, rows=val_rows, numerics=session.numerics)
    return {"epoch": epoch, **stats, "val_loss": val["val_loss"], "val_acc": val["val_acc"],
            "val_auc": agree(val["val_auc"], session.device), "lr": session.scheduler.get_last_lr()[0],
            "wall_s": time.perf_counter() - start}   # training and validation: what a budget pays


def run_epochs(session: Session, progress: Progress, data: Prepared, val_labels: np.ndarray,
               val_rows: np.ndarray, saver: ResumeSaver) -> None:
    """Epochs until the plan, the patience or cfg.epochs runs out."""
    cfg = session.cfg
    for epoch in range(progress.epoch + 1, cfg.epochs + 1):
        if progress.history:   # re-planned on the mean epoch so far: one fast first epoch must not commit a budget
            mean_s = agree(sum(r["wall_s"] for r in progress.history) / len(progress.history), session.device)
            session.plan[0] = max(len(progress.history), planned_epochs(cfg.epochs, cfg.time_budget_s, mean_s))
        if epoch > session.plan[0]:
            break
        progress.record(train_epoch(session, data, val_labels, val_rows, epoch), session.model)
        row = progress.history[-1]
        if is_main():
            print(f"{session.name} epoch {epoch}/{session.plan[0]}: loss {row['train_loss']:.3f} val_auc "
                  f"{row['val_auc']:.3f} {row['img_per_s']:.0f} img/s (data wait {row['data_wait_s']:.1f}s of "
                  f"{row['seconds']:.1f}s)", flush=True)
            # A budget pays for the resume write too: planning must see it (docs/NOTES.md, "Resume writes").
            row["wall_s"] += saver.after_epoch(session, progress,
                                               last=out_of_patience(progress, cfg) or epoch >= session.plan[0])
            if cfg.on_epoch:
                cfg.on_epoch(progress.history, session.plan[0])
        if out_of_patience(progress, cfg):
            break


def out_of_patience(progress: Progress, cfg: TrainConfig) -> bool:
    return cfg.patience is not None and progress.stale >= cfg.patience


def fit_network(spec: ModelSpec, data: Prepared, cfg: TrainConfig, run_dir: Path, device: torch.device,
                rows: np.ndarray | None = None, architecture: dict | None = None) -> dict:
    """Train one registry network and write its folder; returns its card ({} off rank 0)."""
    architecture = architecture or {}
    rows = np.arange(len(data.manifest)) if rows is None else rows
    model_dir = Path(run_dir) / spec.name
    part, labels = split_parts(data.manifest), data.manifest["label"].to_numpy()
    targets = subtype_targets(data.manifest) if cfg.subtypes else labels   # (N, 6) with NaN, or (N,)
    on_device = device if device.type == "cuda" else torch.device("cpu")
    train_ds = SliceDataset(data.images, targets[part["train"]], on_device, rows=rows[part["train"]],
                            masks=training_masks(data, part["train"], spec.name)
                            if cfg.attention and rows.ndim == 1 else None)
    session = build_session(spec, train_ds, cfg, device, architecture)
    progress = resume(session, model_dir) if cfg.resume else Progress()
    started = time.perf_counter() - sum(h["seconds"] for h in progress.history)
    run_epochs(session, progress, data, labels[part["val"]], rows[part["val"]], ResumeSaver(model_dir))
    if isinstance(session.loss_fn, MaskAttentionLoss):
        session.loss_fn.remove()
    train_seconds = time.perf_counter() - started
    session.model.load_state_dict(progress.best_state)
    if not is_main():
        return {}
    return finish_network(session, progress, data, model_dir, rows, train_seconds, architecture)


def training_masks(data: Prepared, train: np.ndarray, name: str) -> np.ndarray | None:
    """(n_train, S, S) bool: each training hemorrhage's stored bleed mask (painted sets, phantoms), all-False where
    it has none; None (and a line saying so) when no training bleed has one: the attention loss has nothing to use."""
    if "train_masks" not in data.derived:   # read once a run, whichever network asks first
        bleeds = train[data.manifest["label"].to_numpy()[train] == 1]
        found = stored_masks(data.manifest["path"].iloc[bleeds].tolist(), data.image_size, data.framing)
        masks = np.zeros((len(train), data.image_size, data.image_size), bool)
        where = {row: k for k, row in enumerate(train)}
        for i, mask in found.items():
            masks[where[bleeds[i]]] = mask
        data.derived["train_masks"] = masks if found else None
    if data.derived["train_masks"] is None and is_main():
        print(f"{name}: no training hemorrhage has a bleed mask; trained without the attention loss", flush=True)
    return data.derived["train_masks"]


def attention_record(loss_fn: torch.nn.Module) -> dict | None:
    """The card's training.attention: the mask-attention loss's weight and CAM layer, or None when off."""
    if not isinstance(loss_fn, MaskAttentionLoss):
        return None
    return {"weight": loss_fn.weight, "layer": loss_fn.layer, "map": "gradcam of output 0, relu, outside the mask",
            "on": "training bleeds the network calls (logit > 0)" if loss_fn.called_only else "every training bleed"}


CAM_TRUTH_BLEEDS = (10, 48)   # validation bleeds with masks a CAM layer is chosen on: at least, at most (seconds)
CAM_LAYER_OPTIONS = 3         # the depth rule's layer and the deepest at each of the next two finer map sizes


def pick_cam_layers(model: torch.nn.Module, name: str, data: Prepared, rows: np.ndarray, val: np.ndarray,
                    device: torch.device) -> dict:
    """The card's "cam": choose_cam_layers' depth rule, or where validation hemorrhages have stored masks (phantoms,
    painted bleeds) the layer, among it and the deepest at each of the next finer map sizes, whose Grad-CAM points at
    them most often (a stage's blocks share one size and nearly one map: docs/NOTES.md)."""
    cam = choose_cam_layers(model, data.image_size)
    if rows.ndim != 1:   # stacks: a sequence model's maps are per stack; the depth rule
        return cam
    bleeds = val[data.manifest["label"].to_numpy()[val] == 1][:CAM_TRUTH_BLEEDS[1]]
    if "cam_masks" not in data.derived:   # read once a run, whichever network asks first
        data.derived["cam_masks"] = stored_masks(data.manifest["path"].iloc[bleeds].tolist(), data.image_size,
                                                 data.framing)
    masks = data.derived["cam_masks"]
    if len(masks) < CAM_TRUTH_BLEEDS[0]:   # no truth to choose on: the depth rule
        return cam
    found = sorted(masks)
    images = channels_first(torch.as_tensor(data.images[rows[bleeds[found]]])).to(device)
    x = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD)
    sides = cam_sides(model, data.image_size)
    chosen = cam["layers"][0]
    finer = {side: layer for layer, side in sides.items() if side > sides[chosen]}   # the deepest of each size
    options = [chosen, *(finer[side] for side in sorted(finer)[:CAM_LAYER_OPTIONS - 1])]
    tolerance = DEFAULT_TOLERANCE_PX * data.image_size / TOLERANCE_SIDE   # the scale core.explain's slack is set on
    best, scores = cam_layer_on_truth(model, name, x, [masks[i] for i in found], options, tolerance)
    model.cam_layer_names = [best]
    return {**cam, "layers": [best], "cells": sides[best],
            "chosen_on": {"validation_bleeds": len(found), "tolerance_px": tolerance, "pointing_game": scores}}


def finish_network(session: Session, progress: Progress, data: Prepared, model_dir: Path, rows: np.ndarray,
                   train_seconds: float, architecture: dict) -> dict:
    """Predictions on val and test, thresholds picked on val, costs, and the card; the folder is written."""
    name, cfg, model, device = session.name, session.cfg, session.model, session.device
    man, part = data.manifest, split_parts(data.manifest)
    labels = {s: man["label"].to_numpy()[part[s]] for s in ("val", "test")}
    outputs = {s: predict_outputs(model, data.images, IMAGENET_MEAN, IMAGENET_STD, device, rows=rows[part[s]],
                                  numerics=session.numerics) for s in ("val", "test")}
    probs = {s: outputs[s][:, 0] for s in outputs}
    native = session.spec.input_size
    training = {"epochs": len(progress.history),
                "epochs_planned": session.plan[0],
                "time_budget_s": cfg.time_budget_s,   # under a run budget: the share it was given
                "run_budget_s": cfg.run_budget_s, "seconds": train_seconds, "augment": cfg.augment,
                "epoch_size": cfg.epoch_size,   # None: every epoch was the whole training split
                "recipe": cfg.per_model.get(name, {}),   # the preset's settings for this model alone
                "attention": attention_record(session.loss_fn),
                "device": str(device), "numerics": session.numerics_record, "pretrained": session.pretrained_loaded, "seed": cfg.seed,
                "init_from": getattr(model, "init_from", None),   # {"run", "weights_sha256"} it started from
                "world_size": world_size(), "best_val_auc": max((h["val_auc"] for h in progress.history), default=None),
                "args": cfg.recorded_args()}
    card = model_card(
        session.spec, labels, probs, training, dataset_facts(cfg, man, part), scan_keys(man, part["test"]),
        input_size=data.image_size, native_input_size=native, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        **input_windows(data.windows), resize_policy=data.resize_policy, framing=data.framing,
        outputs=cfg.outputs, **({"architecture": architecture} if architecture else {}),
        params=count_params(model), gmacs=count_gmacs(model, data.image_size), gmacs_native=count_gmacs(model, native),
        latency=measure_latency(model, data.image_size, device, numerics=session.numerics),
        cam=pick_cam_layers(model, name, data, rows, part["val"], device))
    if cfg.subtypes:
        add_subtype_metrics(card, subtype_targets(man), outputs, part)
    model.to("cpu")
    card = save_model(model_dir, model.state_dict(), card, history_frame(progress.history),
                            predictions_frame(man, part, probs, {s: o[:, 1:] for s, o in outputs.items()}
                                              if cfg.subtypes else None))
    clear_resume_state(model_dir)
    return card
