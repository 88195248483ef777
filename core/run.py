"""A whole training run into one folder: image models first, then ensembles; a shared run budget."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from core.data.splits import Prepared, read_manifest, subtype_targets, write_manifest
from core.engine.budget import RunBudget
from core.engine.config import TrainConfig, agree, is_main, resolve_device, setup_distributed
from core.families import family_of
from core.families.base import FitError
from core.inference import fit_domain_check, fit_image_domain
from core.io import store
from core.io.framing import framing_of
from core.io.imaging import windows_of
from core.io.progress import RunProgress
from core.registry import ModelSpec, get_spec


def _check_split(data: Prepared, run_dir: Path, resume: bool, subtypes: bool = False) -> None:
    """Write split.csv, or on --resume check that the data still splits exactly as before, into the same heads."""
    path = run_dir / store.SPLIT
    if resume and path.is_file():
        old = read_manifest(path)
        same = old[["sha256", "split"]].reset_index(drop=True).equals(
            data.manifest[["sha256", "split"]].reset_index(drop=True))
        if not same:
            raise SystemExit(f"hemolens: {run_dir} was split from different data; resume with the same --data "
                             "and --seed, or start a new --out.")
        facts = store.run_facts(run_dir)
        for flag, trained, now in (("framing", framing_of(facts), data.framing),
                                   ("windows", windows_of(facts), data.windows)):
            if trained != now:
                raise SystemExit(f"hemolens: {run_dir} was trained with --{flag} {trained}; resume with it, "
                                 "or start a new --out.")
        if facts.get("subtypes", False) != subtypes:
            raise SystemExit(f"hemolens: {run_dir} was trained {'without' if subtypes else 'with'} "
                             "--subtypes; resume as it was, or start a new --out.")
        return
    if is_main():
        write_manifest(data.manifest, path)
        store.write_json(run_dir / "leakage.json", data.leakage)


class _Datasets:
    """The Prepared split at each input size, decoded once per size; the first writes the split."""

    def __init__(self, cfg: TrainConfig, data_root: str | Path | list, prepare_fn: Callable[[int], Prepared]):
        self.cfg, self.data_root, self.prepare_fn, self.by_size = cfg, data_root, prepare_fn, {}

    def _facts(self, data: Prepared) -> dict:
        """run.json: the folders the run read (with --synthetic-bleeds their painted sets, made from cfg.data)."""
        roots = self.data_root if isinstance(self.data_root, (list, tuple)) else [self.data_root]
        painted = bool(self.cfg.args.get("synthetic_bleeds"))
        return {"data_roots": [str(Path(r).resolve()) for r in roots], "synthetic": self.cfg.data is None,
                "seed": self.cfg.seed, "framing": data.framing, "windows": data.windows, "subtypes": self.cfg.subtypes,
                "painted_from": [str(Path(d).resolve()) for d in self.cfg.data] if painted else None}

    def at(self, size: int) -> Prepared:
        if size not in self.by_size:
            first = not self.by_size
            self.by_size[size] = self.prepare_fn(size)
            if self.cfg.subtypes:   # before any model trains: a dataset naming no subtype stops the run here
                subtype_targets(self.by_size[size].manifest)
            run_dir = Path(self.cfg.out)
            _check_split(self.by_size[size], run_dir, self.cfg.resume, self.cfg.subtypes)
            if is_main():
                store.write_json(run_dir / "run.json", self._facts(self.by_size[size]))
            skipped = len(self.by_size[size].leakage["skipped_unreadable"])
            if first and skipped and is_main():   # every size skips the same files: say it once
                print(f"hemolens: skipped {skipped} unreadable file(s); see {run_dir / 'leakage.json'}",
                      file=sys.stderr, flush=True)
        return self.by_size[size]


def _input_size(spec: ModelSpec, cfg: TrainConfig) -> int:
    """The size a model trains at: asked for (or native), but never below what it accepts."""
    size = max(cfg.image_size or spec.input_size, spec.min_input_size)
    if is_main() and size != (cfg.image_size or spec.input_size):
        print(f"{spec.name}: trained at {size} px, the smallest input it accepts", flush=True)
    return size


def _budgeted(name: str, own: dict[str, TrainConfig], networks: list[str], budget: RunBudget, device,
              run_budget_s: float) -> TrainConfig:
    """The model's config with its time budget shrunk to its share of what the run has left."""
    cfg = own[name]
    later = networks[networks.index(name):]
    share = agree(budget.share(cfg.time_budget_s, [own[m].time_budget_s for m in later]), device)
    if is_main() and share < (cfg.time_budget_s or math.inf):
        print(f"{name}: {share:.0f} s of training instead of {cfg.time_budget_s or 'unlimited'}, "
              f"to end the run within its {run_budget_s:.0f} s", flush=True)
    return replace(cfg, time_budget_s=share)


def _fit_from_predictions(specs: list[ModelSpec], cfg: TrainConfig, run_dir: Path, device,
                          progress: RunProgress) -> dict[str, dict]:
    """Models fitted on the run's saved predictions (ensembles); one that cannot be fitted is skipped."""
    cards = {}
    for spec in specs:
        progress.start(spec.name)
        try:
            cards[spec.name] = family_of(spec).fit(spec, None, cfg, run_dir, device)
        except FitError as err:   # e.g. a validation split too small to cross-validate a stack
            print(f"hemolens: {spec.name} skipped: {err}", file=sys.stderr, flush=True)
        progress.finished(spec.name, cards.get(spec.name))
    return cards


def train_run(cfg: TrainConfig, data_root: str | Path | list, prepare_fn: Callable[[int], Prepared],
              started: float | None = None) -> dict[str, dict]:
    """Train every model of cfg; returns {model: card}. `prepare_fn(size)` gives the Prepared split.
    Rank 0 keeps RUN/progress.json current for the dashboard (core.io.progress)."""
    device = setup_distributed(resolve_device(cfg.device))
    run_dir, datasets, cards = Path(cfg.out), _Datasets(cfg, data_root, prepare_fn), {}
    specs = {m: get_spec(m) for m in cfg.models}   # where the run's model names become registry specs
    own = {m: replace(cfg, **cfg.per_model.get(m, {})) for m in cfg.models}   # e.g. the CPU demo's VGG input
    done = lambda m: cfg.resume and (run_dir / m / store.CARD).is_file()
    on_images = [m for m in cfg.models if family_of(specs[m]).needs_images]
    networks = [m for m in on_images if family_of(specs[m]).is_network and not done(m)]
    on_predictions = [m for m in cfg.models if m not in on_images]
    started = time.perf_counter() if started is None else started
    budget = RunBudget(cfg.run_budget_s, started) if cfg.run_budget_s else None
    with RunProgress(run_dir if is_main() else None, on_images + on_predictions, [m for m in cfg.models if done(m)],
                     cfg.run_budget_s, started_at=time.time() - (time.perf_counter() - started)) as progress:
        for name in on_images:
            tick, data = time.perf_counter(), datasets.at(_input_size(specs[name], own[name]))
            if done(name):
                if is_main():
                    print(f"{name}: already complete in {run_dir}, skipped", flush=True)
                cards[name] = store.load_card(run_dir / name)
                continue
            progress.start(name, own[name].epochs if name in networks else None)
            model_cfg = _budgeted(name, own, networks, budget, device, cfg.run_budget_s) \
                if budget and name in networks else own[name]
            cards[name] = family_of(specs[name]).fit(specs[name], data, replace(model_cfg, on_epoch=progress.epoch),
                                                     run_dir, device)
            progress.finished(name, cards[name])   # its card is on the dashboard already
            if cards[name]:   # rank 0: the statistics every upload is checked against (core.metrics.domain)
                cards[name] = fit_domain_check(run_dir / name, data, device, cfg.seed)
            if budget and name in networks and cards[name]:
                budget.record(time.perf_counter() - tick, cards[name]["training"]["seconds"])
            if dist.is_initialized():
                dist.barrier()
        if is_main():
            cards.update(_fit_from_predictions([specs[m] for m in on_predictions], cfg, run_dir, device, progress))
            if datasets.by_size:   # the run's own check of uploads, whatever its models (core.inference)
                fit_image_domain(run_dir, next(iter(datasets.by_size.values())), cfg.seed)
    if dist.is_initialized():
        dist.destroy_process_group()
    return cards
