"""Train and compare hemorrhage classifiers; thin CLI over core.run.

    python train.py                      # the embedded demo: synthetic phantoms, every CNN, quick preset
    python train.py --data PATH --models resnet50,mobilenet_v2 --epochs 10 --out checkpoints/mine
    torchrun --nproc_per_node=2 train.py --device cpu ...   # DistributedDataParallel
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.cli import Parser, folder, name_list, non_negative_float, non_negative_int, positive_float, positive_int
from core.data.discover import DatasetError
from core.data.splits import prepare
from core.engine.config import TrainConfig, resolve_device
from core.engine.init import check_init_from
from core.io.framing import FRAMINGS
from core.io.imaging import WINDOW_SETS
from core.io.progress import RunBusy, trainer_lock
from core.io.store import CheckpointError
from core.nets.build import NETWORK_NAMES
from core.nets.cnn import HEADS
from core.nets.numerics import NAMES as NUMERICS
from core.phantom.scanner import OTHER
from core.presets import (CPU_BUDGET_S, CPU_RUN_BUDGET_S, OTHER_SCANNER_S, OTHER_SCANNER_SEED, OTHER_SCANNER_SLICES,
                          PAINTED_COPIES, PAINTED_RECIPE, PAINTED_WARMUP, WARMUP_DIR, Preset, demo_preset,
                          evaluate_other_scanner, painted_root, phantom_root)
from core.registry import CNN_NAMES, DEFAULT_BACKBONE, REGISTRY, SEQUENCE_NAMES
from core.run import train_run


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", help="dataset folder(s) (class folders, split folders or images + labels "
                                             "CSV); several are pooled, each split on its own so no group spans two "
                                             "(recorded in run.json); default: the synthetic phantom set")
    p.add_argument("--models", type=name_list,
                   help="comma-separated registry names, or 'all' (default: the preset's: every CNN, the classical "
                        "baselines and the ensembles; on a GPU the sequence models too)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--image-size", type=positive_int, help="training size in px (default: preset; native on CUDA)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto: a CUDA GPU, else Apple's MPS, else the CPU")
    p.add_argument("--numerics", default="auto", choices=["auto", *NUMERICS],
                   help="fp32, fp32 + channels_last, bf16 autocast (+ channels_last); auto (default): the fastest "
                        "for each model on this machine, timed on a few real steps and cached")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", type=folder, default="checkpoints/demo")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights where reachable")
    p.add_argument("--weights-dir", help="folder with downloaded ImageNet weight files (offline --pretrained)")
    p.add_argument("--init-from", type=folder, metavar="RUN",
                   help="start each network from its weights in the run folder RUN, verified (sha256) and refused "
                        "unless it is the same network: model, --head, --subtypes, --windows, sequence settings")
    p.add_argument("--time-budget", type=positive_float,
                   help="seconds of training per network: after the first epoch, the number of epochs nearest it "
                        f"(at least 2); default: the preset's ({CPU_BUDGET_S} s on a CPU, none on a GPU) for the "
                        "demo, none with --data or --epochs")
    p.add_argument("--run-budget", type=positive_float,
                   help="seconds for the whole run: where it falls behind, each network trains for less than its "
                        "time budget (its share of the time left); default: the preset's "
                        f"({CPU_RUN_BUDGET_S - OTHER_SCANNER_S} s on a CPU, the demo's {CPU_RUN_BUDGET_S} s less "
                        f"{OTHER_SCANNER_S} s for its other-scanner evaluation after; none on a GPU) for the demo, "
                        "none with --data, --epochs or --time-budget")
    p.add_argument("--epoch-size", type=positive_int,
                   help="training images per epoch, drawn afresh each epoch (default: the whole training split; "
                        "448 on the CPU preset's phantoms)")
    p.add_argument("--patience", type=positive_int,
                   help=f"epochs without a better validation AUC before a network stops (default {TrainConfig.patience}; "
                        "none with --synthetic-bleeds)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="rotate, zoom, flip and jitter training batches (default: on; off on the CPU "
                                        "preset's phantoms)")
    p.add_argument("--framing", choices=FRAMINGS,
                   help="head: crop every slice to its head and blank the table and letters around it, in training, "
                        "evaluation and upload alike (default: head with --data, none on the phantoms)")
    p.add_argument("--windows", choices=list(WINDOW_SETS), default="brain",
                   help="rsna3: three HU windows as the channels (brain 40/80, subdural 80/200, soft tissue 40/380, "
                        "centre/width, as the RSNA 2019 winners), in training, evaluation and upload alike; needs CT "
                        "in HU (DICOM, NIfTI): a set with an 8-bit image is refused (default: brain, grey)")
    p.add_argument("--head", choices=HEADS,
                   help="gap: AlexNet and the VGGs pool their last convolutions into one linear layer instead of "
                        "their ~60-120 M-weight fully connected classifiers (default: stock; gap for them in the CPU "
                        "demo)")
    p.add_argument("--synthetic-bleeds", action="store_true",
                   help="train on the normal slices of --data and copies of them with hemorrhages painted in "
                        "(core.insert; cached): a normal and its copy differ only by the bleed; defaults then "
                        f"{PAINTED_RECIPE['image_size']} px, {PAINTED_RECIPE['epochs']} epochs, no early stop")
    p.add_argument("--warmup-phantoms", type=non_negative_int,
                   help="with --synthetic-bleeds, the networks first train on this many phantom slices "
                        f"({PAINTED_WARMUP['epochs']} epochs into RUN/{WARMUP_DIR}) and start from those weights; 0: "
                        f"from scratch (default {PAINTED_WARMUP['phantoms']}; none with --init-from or --pretrained)")
    p.add_argument("--synthetic-copies", type=positive_int,
                   help=f"painted copies of each normal with --synthetic-bleeds (default {PAINTED_COPIES})")
    p.add_argument("--attention", type=non_negative_float,
                   help="weight of a loss on each network's Grad-CAM evidence outside the bleed masks of its training "
                        "hemorrhages (painted bleeds, phantoms; core.engine.attention); 0: off (default: the preset's)")
    p.add_argument("--subtypes", action="store_true",
                   help="networks get a multi-label head: any hemorrhage and the five subtypes (epidural, "
                        "intraparenchymal, intraventricular, subarachnoid, subdural), learnt where the data names "
                        "them; cards hold each subtype's test AUC")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last completed epoch")
    p.add_argument("--phantoms", type=positive_int, help="number of phantom slices when no --data is given")
    p.add_argument("--other-scanner", type=non_negative_int, metavar="N",
                   help="without --data, the finished run is evaluated on N fresh phantom slices imaged as by another "
                        "scanner (noise, kernel, slice thickness, field of view, window; core.phantom.scanner), stored "
                        f"with it as evaluations/{OTHER.set_name}; 0: none (default: a third of the phantoms, at most "
                        f"{OTHER_SCANNER_SLICES})")
    p.add_argument("--sequence-backbone", default=DEFAULT_BACKBONE, choices=CNN_NAMES,
                   help="registry CNN that encodes each slice of cnn_gru / cnn_lstm stacks")
    p.add_argument("--stack-size", type=positive_int, default=5, help="slices per stack for the sequence models")
    return p.parse_args(argv)


def model_names(args: argparse.Namespace, preset: Preset) -> list[str]:
    """The models asked for (default: the preset's); SystemExit(2) with one line for unknown ones."""
    default = PAINTED_RECIPE["models"] if args.synthetic_bleeds else preset.models
    names = list(default) if args.models is None else list(REGISTRY) if args.models == ["all"] else args.models
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        print(f"hemolens: unknown model(s) {', '.join(unknown)}; available: {', '.join(REGISTRY)}", file=sys.stderr)
        raise SystemExit(2)
    return names


def resolve_config(args: argparse.Namespace, preset: Preset, names: list[str]) -> TrainConfig:
    """The run's TrainConfig from the flags and the preset. The preset's epoch size, augmentation and
    budgets belong to the phantom demo: --data drops them, and so does a flag that asks for a
    network's epochs or seconds explicitly. Per-model settings (the CPU demo's, the painted recipe's) go with
    any training flag."""
    demo = args.data is None
    given = lambda value, default: default if value is None else value   # None: the flag was not given
    if args.synthetic_bleeds:
        preset = replace(preset, **PAINTED_RECIPE)
    explicit_length = args.epochs is not None or args.time_budget is not None
    return TrainConfig(
        models=names, out=args.out, epochs=given(args.epochs, preset.epochs),
        image_size=given(args.image_size, preset.image_size), batch_size=given(args.batch_size, preset.batch_size),
        lr=args.lr, device=args.device, numerics=args.numerics, seed=args.seed, pretrained=args.pretrained,
        weights_dir=args.weights_dir, init_from=args.init_from, resume=args.resume, data=args.data,
        framing=given(args.framing, "none" if demo else "head"), windows=args.windows,
        sequence_backbone=args.sequence_backbone, stack_size=args.stack_size, subtypes=args.subtypes,
        attention=given(args.attention, preset.attention),
        head=given(args.head, TrainConfig.head),
        augment=given(args.augment, preset.augment if demo else True),
        epoch_size=given(args.epoch_size, preset.epoch_size if demo else None),
        patience=given(args.patience, preset.patience),
        time_budget_s=given(args.time_budget, preset.time_budget_s if demo and args.epochs is None else None),
        run_budget_s=given(args.run_budget, preset.run_budget_s if demo and not explicit_length else None),
        per_model=(preset.per_model if (demo or args.synthetic_bleeds) and not explicit_length
                   and args.image_size is None and args.lr is None and args.head is None else {}),
        args={k: v for k, v in vars(args).items() if v is not None})


def data_root(args: argparse.Namespace, preset: Preset, names: list[str]) -> list[Path] | Path:
    """The --data folders (their painted sets with --synthetic-bleeds), or the cached phantom set. Phantom stacks
    only for sequence models: otherwise independent heads teach more per slice (docs/NOTES.md, "CPU demo preset")."""
    if args.data:
        if not args.synthetic_bleeds:
            return [Path(d) for d in args.data]
        return [painted_root(d, args.seed, args.synthetic_copies or PAINTED_COPIES) for d in args.data]
    n = preset.phantoms if args.phantoms is None else args.phantoms
    return phantom_root(n, args.seed, preset.difficulty, phantom_stack_size(args, names), preset.twins)


def phantom_stack_size(args: argparse.Namespace, names: list[str]) -> int:
    return args.stack_size if any(m in SEQUENCE_NAMES for m in names) else 1


def other_scanner_root(args: argparse.Namespace, preset: Preset, names: list[str]) -> Path | None:
    """A phantom run's external test set (docs/NOTES.md, "Other-scanner phantoms"): fresh heads drawn as the run's
    own, imaged as by another scanner; None on --data or where none is asked for."""
    n = args.other_scanner
    if n is None:
        n = min(OTHER_SCANNER_SLICES, (preset.phantoms if args.phantoms is None else args.phantoms) // 3)
    if args.data or n < 2:   # both classes need two slices at least
        return None
    return phantom_root(n, args.seed + OTHER_SCANNER_SEED, preset.difficulty, phantom_stack_size(args, names),
                        preset.twins, OTHER)


def other_scanner_check(args: argparse.Namespace, preset: Preset, names: list[str], cfg: TrainConfig) -> None:
    """A finished phantom run evaluated on other_scanner_root's set, stored with it; a failure is one line, the run
    stays complete."""
    tick, data = time.perf_counter(), other_scanner_root(args, preset, names)
    if data is None:
        return
    try:
        gap = evaluate_other_scanner(cfg.out, data, resolve_device(cfg.device).type)
    except (DatasetError, CheckpointError) as err:
        print(f"hemolens: the {OTHER.set_name} evaluation failed: {err}", file=sys.stderr)
        return
    if gap:
        print(f"Evaluated on {OTHER.set_name}: {gap} ({time.perf_counter() - tick:.0f} s)", flush=True)


def warmup_argv(args: argparse.Namespace, cfg: TrainConfig) -> list[str] | None:
    """The phantom run a painted run's networks start from (PAINTED_WARMUP): the same networks, size, head,
    windows, outputs and seed, into RUN/warmup; None where there is none to run."""
    phantoms = PAINTED_WARMUP["phantoms"] if args.warmup_phantoms is None else args.warmup_phantoms
    networks = [m for m in cfg.models if m in NETWORK_NAMES]
    if not (args.synthetic_bleeds and phantoms and networks) or cfg.init_from or cfg.pretrained:
        return None
    return ["--models", ",".join(networks), "--image-size", str(cfg.image_size), "--phantoms", str(phantoms),
            "--epochs", str(PAINTED_WARMUP["epochs"]), "--epoch-size", str(PAINTED_WARMUP["epoch_size"]),
            "--lr", str(PAINTED_WARMUP["lr"]), "--augment", "--head", cfg.head, "--windows", cfg.windows,
            "--seed", str(cfg.seed), "--device", cfg.device, "--numerics", cfg.numerics,
            "--sequence-backbone", cfg.sequence_backbone, "--stack-size", str(cfg.stack_size), "--other-scanner", "0",
            "--out", str(Path(cfg.out) / WARMUP_DIR)] + ["--subtypes"] * cfg.subtypes + ["--resume"] * cfg.resume


def warm_up(args: argparse.Namespace, cfg: TrainConfig) -> TrainConfig | None:
    """cfg starting from its phantom warm-up run (trained first), or cfg itself where there is none; None when the
    warm-up fails."""
    argv = warmup_argv(args, cfg)
    if argv is None:
        return cfg
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:   # a nested run would tear down torchrun's process group
        print("hemolens: no phantom warm-up under torchrun; give --init-from a phantom run of these networks",
              file=sys.stderr)
        return cfg
    folder = Path(cfg.out) / WARMUP_DIR
    print(f"Phantom warm-up of {', '.join(argv[1].split(','))} into {folder}, then the painted slices", flush=True)
    if main(argv) != 0:
        return None
    warmed = replace(cfg, init_from=str(folder))
    check_init_from(warmed)
    return warmed


def main(argv=None) -> int:
    start = time.perf_counter()   # a run budget counts from here: generating the phantoms is part of the run
    try:
        args = parse_args(argv)
        if args.synthetic_bleeds and not args.data:
            raise SystemExit("hemolens: --synthetic-bleeds paints into the normal slices of --data; give --data")
        preset = demo_preset(resolve_device(args.device).type)
        names = model_names(args, preset)
        if args.pretrained and args.init_from:
            raise SystemExit("hemolens: --pretrained and --init-from both choose the starting weights; give one")
        cfg = resolve_config(args, preset, names)
        # A double backward through DDP's gradient hooks is untested.
        if cfg.attention and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SystemExit("hemolens: --attention is not supported under torchrun yet; train on one process")
        check_init_from(cfg)   # every network, before anything is trained or written
    except SystemExit as stop:   # a bad flag: one line already printed, or in the exit's message
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        return 2 if stop.code else 0   # 0: --help
    # One trainer per run folder, from before the phantoms are generated; torchrun's other ranks follow rank 0.
    lock = trainer_lock(cfg.out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    try:
        with lock:
            cfg = warm_up(args, cfg)
            if cfg is None:   # the warm-up failed and said why
                return 2
            root = data_root(args, preset, names)
            cards = train_run(cfg, root, lambda size: prepare(root, size, seed=args.seed, framing=cfg.framing,
                                                              windows=cfg.windows), started=start)
            if cards and all(cards.values()) and os.environ.get("RANK", "0") == "0":
                other_scanner_check(args, preset, names, cfg)
    except (DatasetError, RunBusy) as err:
        print(f"hemolens: {err}", file=sys.stderr)
        return 2
    if cards and all(cards.values()):
        print_summary(cards)
        print(f"run folder: {cfg.out}  ({time.perf_counter() - start:.0f} s in all)")
    return 0


def print_summary(cards: dict) -> None:
    """One line per model: test AUC with its DeLong 95% CI, flagged where the CI reaches 0.5 (a model the
    test set cannot tell from chance), accuracy, training seconds and batch-1 latency."""
    print(f"\n{'model':<20}{'test AUC':>10}{'95% CI':>14}{'test acc':>10}{'train s':>9}{'ms/img':>9}")
    near_chance = []
    for name, card in cards.items():
        test = card["metrics"]["test"]
        lo, hi = test.get("roc_auc_ci") or (float("nan"), float("nan"))
        flag = "" if lo > 0.5 else "*"   # NaN (one-class test set) is flagged too
        near_chance += [name] if flag else []
        print(f"{name:<20}{test['roc_auc'] or float('nan'):>10.3f}{f'{lo:.2f}-{hi:.2f}{flag}':>14}"
              f"{test['accuracy']:>10.3f}{card['training']['seconds']:>9.1f}{card['latency']['batch1_ms_p50']:>9.1f}")
    if near_chance:
        print(f"* not clearly above chance: the test AUC's 95% CI includes 0.5 ({', '.join(near_chance)})")


if __name__ == "__main__":
    sys.exit(main())
