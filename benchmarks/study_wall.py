"""Wall time of the studies' six CNNs x 10 epochs on a 5,000-slice phantom set (goal on one H100: <= 90 s).

    python benchmarks/study_wall.py [--n 5000] [--epochs 10] [--batch-size 64] [--device auto]

The six are the registry CNNs a source study used (AlexNet, VGG-16, ResNet-50, MobileNetV2,
Inception-v3, Xception), each at its native size, trained through core.run.train_run exactly
as `python train.py` trains them on a GPU (bf16 autocast, channels_last, the decoded set on the
GPU), from scratch. Every epoch runs (no early stopping), so the figure is 10 epochs each. Printed
per model: training seconds (with each epoch's validation), the rest of its wall time (test
predictions, latency, checkpoint), img/s and AUCs; then the total. Phantom generation and decoding
are timed apart: they happen once per dataset. On a CPU it runs, but for hours at native size.
"""
import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from core.io.store import HISTORY  # noqa: E402
from core.registry import CNN_NAMES, REGISTRY  # noqa: E402
from core.presets import phantom_root  # noqa: E402
from core.data.splits import prepare  # noqa: E402
from core.engine.config import TrainConfig  # noqa: E402
from core.run import train_run  # noqa: E402

STUDY_CNNS = [name for name in CNN_NAMES if REGISTRY[name].study]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default=",".join(STUDY_CNNS))
    args = ap.parse_args()
    names = args.models.split(",")

    tick = time.perf_counter()
    root = phantom_root(args.n, seed=0, stack_size=1)
    generate_s = time.perf_counter() - tick
    sizes = sorted({REGISTRY[m].input_size for m in names})
    tick = time.perf_counter()
    prepared = {size: prepare(root, size, seed=0) for size in sizes}
    decode_s = time.perf_counter() - tick

    model_wall = {}
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(models=names, out=out, epochs=args.epochs, batch_size=args.batch_size,
                          patience=args.epochs + 1, device=args.device)
        start = time.perf_counter()
        for name in names:   # one train_run per model, to time each model's whole share of the wall
            tick = time.perf_counter()
            cards = train_run(dataclasses.replace(cfg, models=[name]), root, prepared.__getitem__)
            model_wall[name] = (time.perf_counter() - tick, cards[name],
                                pd.read_csv(Path(out) / name / HISTORY))
        total = time.perf_counter() - start

    n_train = int((prepared[sizes[0]].manifest["split"] == "train").sum())
    print(f"\n{args.n} phantom slices ({n_train} training), batch {args.batch_size}, {args.epochs} epochs each; "
          f"phantoms generated in {generate_s:.0f} s, decoded at {sizes} px in {decode_s:.0f} s (not counted)")
    print(f"{'model':<16}{'px':>5}{'epochs':>7}{'train s':>9}{'rest s':>8}{'img/s':>8}{'val AUC':>9}{'test AUC':>10}")
    for name, (wall, card, history) in model_wall.items():
        train_s = card["training"]["seconds"]
        print(f"{name:<16}{card['input_size']:>5}{len(history):>7}{train_s:>9.1f}{wall - train_s:>8.1f}"
              f"{history['img_per_s'].median():>8.0f}{card['training']['best_val_auc']:>9.3f}"
              f"{card['metrics']['test']['roc_auc']:>10.3f}")
    print(f"all {len(names)}: {total:.1f} s wall (goal for the six on one H100: <= 90 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
