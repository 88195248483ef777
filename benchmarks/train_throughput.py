"""Training throughput per model: images/s and the share of time spent waiting for data.

    python benchmarks/train_throughput.py [--models all] [--size 64] [--n 256] [--epochs 2] [--device auto]

Each model trains in the numerics given by --numerics (default bf16_cl on CUDA, fp32 elsewhere); on
CUDA it also trains in fp32 and prints the speed-up measured in the same process (benchmarks/numerics.py
compares every numerics per step). The first epoch is a warm-up and is not counted.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from core.data.decode import SliceDataset  # noqa: E402
from core.nets.build import create_model  # noqa: E402
from core.registry import CNN_NAMES  # noqa: E402
from core.phantom.generate import write_dataset  # noqa: E402
from core.data.splits import prepare  # noqa: E402
from core.engine.config import TrainConfig, resolve_device  # noqa: E402
from core.engine.loop import Training, train_one_epoch  # noqa: E402
from core.nets.numerics import NAMES, Numerics  # noqa: E402


def measure(name, data, size, device, epochs, batch_size, numerics):
    model = numerics.model(create_model(name).to(device))
    on = device if device.type == "cuda" else torch.device("cpu")
    ds = SliceDataset(data.images, data.manifest["label"].to_numpy(), on)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=SliceDataset.collate)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)   # as core.training
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    training = Training(cfg=TrainConfig(models=[name]), device=device, trainee=model, loader=loader, optimizer=opt,
                        scheduler=sched, loss_fn=loss_fn, numerics=numerics)
    runs = [train_one_epoch(training, e) for e in range(epochs)]
    timed = runs[1:] or runs
    seconds = sum(r["seconds"] for r in timed)
    images = sum(r["img_per_s"] * r["seconds"] for r in timed)
    return images / seconds, sum(r["data_wait_s"] for r in timed) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--numerics", choices=NAMES)
    args = p.parse_args()
    device = resolve_device(args.device)
    numerics = Numerics(args.numerics or ("bf16_cl" if device.type == "cuda" else "fp32"))
    names = CNN_NAMES if args.models == "all" else args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), n=args.n, size=max(args.size, 128), seed=0, stack_size=1)
        data = prepare(tmp, args.size)
    print(f"device {device}, {torch.get_num_threads()} threads, {len(data.manifest)} images at {args.size} px, "
          f"batch {args.batch_size}, {numerics.name}")
    header = f"{'model':<20}{'img/s':>9}{'data wait':>11}"
    print(header + (f"{'fp32 img/s':>12}{'vs fp32 x':>11}" if device.type == "cuda" else ""))
    for name in names:
        fast, wait = measure(name, data, args.size, device, args.epochs, args.batch_size, numerics)
        line = f"{name:<20}{fast:>9.1f}{wait:>10.1%}"
        if device.type == "cuda":
            slow, _ = measure(name, data, args.size, device, args.epochs, args.batch_size, Numerics("fp32"))
            line += f"{slow:>12.1f}{fast / slow:>11.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
