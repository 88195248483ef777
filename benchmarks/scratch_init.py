"""From-scratch learning curves: torchvision's initialisation against the registry's scratch_init.

    python benchmarks/scratch_init.py [--model vgg16] [--size 32] [--epochs 6] [--difficulty 0 0.25]

Trains the model twice on the CPU demo's phantom set, once as torchvision initialises it and once
re-initialised by its registry `scratch_init` (VGG-16: He fan-in), same seed, data and schedule as
core.training, and prints the training loss and validation AUC per epoch for both. Not part of
`make bench`: it trains for minutes. A loss that stays at ln 2 = 0.693 is a constant prediction.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from core.datasets import SliceDataset  # noqa: E402
from core.models import REGISTRY, create_model  # noqa: E402
from core.presets import demo_preset, phantom_root  # noqa: E402
from core.splits import prepare  # noqa: E402
from core.training import evaluate, lr_factor, train_one_epoch  # noqa: E402


def curve(name, data, init, epochs, batch_size, warmup_epochs=0.25, seed=0):
    torch.manual_seed(seed)
    model = create_model(name)
    if init == "scratch_init":
        REGISTRY[name].scratch_init(model)
    split, labels = data.manifest["split"].to_numpy(), data.manifest["label"].to_numpy()
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    ds = SliceDataset(data.images, labels[train], rows=train)
    loader = DataLoader(ds, batch_size=batch_size, drop_last=True,
                        sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.AdamW(model.parameters(), lr=REGISTRY[name].scratch_lr, weight_decay=1e-4, fused=True)
    steps = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, int(warmup_epochs * steps), epochs * steps))
    n_pos = labels[train].sum()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(train) - n_pos) / n_pos))
    cpu = torch.device("cpu")
    for epoch in range(1, epochs + 1):
        stats = train_one_epoch(model, loader, opt, sched, loss_fn, cpu, epoch, seed)
        auc = evaluate(model, data.images, labels[val], cpu, rows=val)["val_auc"]
        print(f"{name:<10}{init:<14}{epoch:>6}{stats['train_loss']:>12.3f}{auc:>10.3f}{stats['seconds']:>10.1f}",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--difficulty", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    args = ap.parse_args()
    if REGISTRY[args.model].scratch_init is None:
        print(f"{args.model} has no scratch_init in the registry; nothing to compare", file=sys.stderr)
        return 2
    preset = demo_preset("cpu")
    data = prepare(phantom_root(preset.phantoms, 0, tuple(args.difficulty or preset.difficulty), 1), args.size, seed=0)
    print(f"{'model':<10}{'init':<14}{'epoch':>6}{'train loss':>12}{'val AUC':>10}{'seconds':>10}")
    for init in ("torchvision", "scratch_init"):
        curve(args.model, data, init, args.epochs, preset.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
