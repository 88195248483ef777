"""The embedded default: which synthetic data and how much training, per device."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

PHANTOM_CACHE = Path(os.environ.get("HEMOLENS_PHANTOMS", Path(__file__).resolve().parents[1] / "data" / "phantoms"))
PHANTOM_SIZE = 256


@dataclass(frozen=True)
class Preset:
    phantoms: int
    image_size: int | None     # None: each model's native size
    epochs: int
    batch_size: int


def demo_preset(device_type: str) -> Preset:
    """Quick on a 2-core CPU (all nine CNNs in minutes); native resolution and more data on a GPU."""
    if device_type == "cuda":
        return Preset(phantoms=5000, image_size=None, epochs=10, batch_size=64)
    return Preset(phantoms=600, image_size=64, epochs=6, batch_size=32)


def phantom_root(n: int, seed: int) -> Path:
    """The cached phantom set for (n, seed), generated on first use.

    Generated into a temporary folder and renamed into place, so concurrent torchrun workers and
    killed runs never see a half-written set."""
    from core.phantom import write_dataset

    root = PHANTOM_CACHE / f"n{n}_s{PHANTOM_SIZE}_seed{seed}"
    if root.is_dir():
        return root
    PHANTOM_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=PHANTOM_CACHE))
    write_dataset(tmp, n=n, size=PHANTOM_SIZE, seed=seed)
    try:
        tmp.rename(root)
    except OSError:            # another worker finished first: its set is identical (same seed)
        shutil.rmtree(tmp, ignore_errors=True)
    return root
