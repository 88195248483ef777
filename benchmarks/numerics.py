"""Training-step time of every CNN in each numerics, as a ratio to fp32 eager measured in the same process.

    python benchmarks/numerics.py [--models all] [--sizes 64,128] [--batch-size 16] [--device auto] [--head gap]

One AdamW step (forward, backward, update) on a batch of phantom-like input, each numerics' fastest over
core.nets.numerics.fastest_steps' two passes: the same timing `python train.py --numerics auto` uses
to choose. The `auto` column is the fastest, what training would pick on this machine.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.data.decode import to_model_input  # noqa: E402
from core.engine.config import resolve_device  # noqa: E402
from core.nets.build import create_model  # noqa: E402
from core.nets.cnn import HEADS, IMAGENET_MEAN, IMAGENET_STD, head_architecture  # noqa: E402
from core.nets.numerics import candidates, fastest_steps, machine  # noqa: E402
from core.registry import CNN_NAMES, get_spec  # noqa: E402


def step_times(name: str, size: int, batch: int, device: torch.device, head: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(name, **head_architecture(name, head)).to(device)
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=device)
    x = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD)
    y = torch.randint(0, 2, (batch,), device=device).float()
    return fastest_steps(model, x, y, device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="all")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--head", default="stock", choices=HEADS, help="gap: AlexNet's and the VGGs' GAP head")
    args = p.parse_args()
    device = resolve_device(args.device)
    names = CNN_NAMES if args.models == "all" else args.models.split(",")
    options = candidates(device)
    print(f"{machine()}; device {device}; batch {args.batch_size}; head {args.head}; ratio = fp32 step time / this one's")
    print(f"{'model':<20}{'px':>5}{'fp32 ms':>9}" + "".join(f"{n + ' x':>11}" for n in options[1:]) + f"{'auto':>9}")
    for name in names:
        for size in (int(s) for s in args.sizes.split(",")):
            size = max(size, get_spec(name).min_input_size)
            t = step_times(name, size, args.batch_size, device, args.head)
            print(f"{name:<20}{size:>5}{1000 * t['fp32']:>9.1f}"
                  + "".join(f"{t['fp32'] / t[n]:>11.2f}" for n in options[1:]) + f"{min(t, key=t.get):>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
