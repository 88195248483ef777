"""From-scratch learning curves: torchvision's initialisation against the registry's scratch_init.

    python benchmarks/scratch_init.py [--model vgg16] [--size 32] [--epochs 6] [--difficulty 0 0.25]
    python benchmarks/scratch_init.py --model mobilenet_v3_large --size 64 --epochs 8

Trains the model twice with core.engine.fit.fit_network on the CPU demo's phantom set (same seed, data,
learning rate and schedule as the CPU demo: its batch size and the model's warm-up), once as
torchvision initialises it and once re-initialised by its registry `scratch_init` (VGG-16: He
fan-in; the MobileNets: zero-gamma residual blocks), and prints the training loss and validation AUC per epoch for both. Not part of
`make bench`: it trains for minutes. A loss that stays at ln 2 = 0.693 is a constant prediction.
"""
import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from core.io.store import HISTORY  # noqa: E402
from core.nets.cnn import CNNS  # noqa: E402
from core.presets import demo_preset, phantom_root  # noqa: E402
from core.data.splits import prepare  # noqa: E402
from core.engine.config import TrainConfig  # noqa: E402
from core.engine.fit import fit_network  # noqa: E402
from core.registry import get_spec  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--difficulty", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    args = ap.parse_args()
    build = CNNS[args.model]
    if build.scratch_init is None:
        print(f"{args.model} has no scratch_init in the registry; nothing to compare", file=sys.stderr)
        return 2
    preset = demo_preset("cpu")
    data = prepare(phantom_root(preset.phantoms, 0, tuple(args.difficulty or preset.difficulty), 1), args.size, seed=0)
    warmup = preset.per_model.get(args.model, {}).get("warmup_epochs", TrainConfig.warmup_epochs)
    rows = []
    for init, variant in (("torchvision", dataclasses.replace(build, scratch_init=None)), ("scratch_init", build)):
        CNNS[args.model] = variant   # the engine always applies the network's scratch_init
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(models=[args.model], out=out, epochs=args.epochs, image_size=args.size,
                              batch_size=preset.batch_size, warmup_epochs=warmup, patience=args.epochs, device="cpu")
            fit_network(get_spec(args.model), data, cfg, Path(out), torch.device("cpu"))
            history = pd.read_csv(Path(out) / args.model / HISTORY)
        rows.extend((init, h) for h in history.itertuples())
    width = len(args.model) + 2
    print(f"\n{'model':<{width}}{'init':<14}{'epoch':>6}{'train loss':>12}{'val AUC':>10}{'seconds':>10}")
    for init, h in rows:
        print(f"{args.model:<{width}}{init:<14}{h.epoch:>6}{h.train_loss:>12.3f}{h.val_auc:>10.3f}{h.seconds:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
