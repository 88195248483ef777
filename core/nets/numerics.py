"""Numerics of one network on one machine: fp32, fp32 + channels_last, bf16 autocast (+ channels_last).

`choose_numerics` times a few real optimizer steps of each and keeps the fastest, cached per machine
and model in a JSON file: the winner depends on both (docs/NOTES.md, "Numerics per model").
"""
from __future__ import annotations

import copy
import hashlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core.io.store import CheckpointError, read_json, write_json

NAMES = ("fp32", "fp32_cl", "bf16", "bf16_cl")
CACHE = Path(os.environ.get("HEMOLENS_CACHE", Path.home() / ".cache" / "hemolens")) / "numerics.json"
WARMUP_STEPS, TIMED_STEPS = 1, 1   # per candidate and pass: ~8 steps a model, paid once per machine


@dataclass(frozen=True)
class Numerics:
    name: str = "fp32"

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"numerics {self.name!r} is not one of {', '.join(NAMES)}")

    @property
    def bf16(self) -> bool:
        return self.name.startswith("bf16")

    @property
    def channels_last(self) -> bool:
        return self.name.endswith("_cl")

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """Slices (4-D) in the model's memory format; stacks (5-D) stay contiguous, as convolutions
        follow the weights' format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)


def candidates(device: torch.device) -> tuple[str, ...]:
    """What is worth timing here: bf16 only where the device computes it natively."""
    native_bf16 = (torch.cuda.is_bf16_supported() if device.type == "cuda"
                   else device.type == "mps" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return NAMES if native_bf16 else ("fp32", "fp32_cl")


def usable(name: str | None, device: torch.device) -> Numerics:
    """A card's numerics on the device at hand: bf16 falls back to fp32 where it is not native."""
    name = name or "fp32"
    if name.startswith("bf16") and "bf16" not in candidates(device):
        name = name.replace("bf16", "fp32")
    return Numerics(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, numerics: Numerics,
              device: torch.device) -> float:
    """Median seconds of one AdamW training step of a copy of `model` (the model itself is untouched)."""
    trial = numerics.model(copy.deepcopy(model)).train()
    optimizer = torch.optim.AdamW(trial.parameters(), lr=1e-4, fused=device.type != "mps")
    x, loss_fn, times = numerics.input(x), torch.nn.BCEWithLogitsLoss(), []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        _sync(device)
        start = time.perf_counter()
        with numerics.autocast(device):
            loss = loss_fn(trial(x).float().reshape(y.shape), y)   # y: (B,) or a subtypes head's (B, 6)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """What the timings depend on besides the model: processor, threads, device and library versions."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return f"{platform.machine()} {_cpu_name()} {torch.get_num_threads()}t {gpu} torch {torch.__version__}"


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def choose_numerics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                    key: str, cache: Path | None = None) -> tuple[Numerics, dict]:
    """The fastest numerics for training `model` on batches shaped like `x`, and the record for its card:
    {"choice", "step_s" per candidate, "cached"}. `key` names the model and its architecture."""
    cache, here = cache or CACHE, machine()
    entry = hashlib.sha256(f"{here}|{device.type}|{key}|{tuple(x.shape)}".encode()).hexdigest()[:16]
    known = _read_cache(cache)
    if entry in known:
        return Numerics(known[entry]["choice"]), {**known[entry], "cached": True}
    step_s = fastest_steps(model, x, y, device)
    record = {"choice": min(step_s, key=step_s.get), "step_s": step_s, "machine": here}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {**_read_cache(cache), entry: record})
    return Numerics(record["choice"]), {**record, "cached": False}


def fastest_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    """Each candidate's fastest step over two passes, the second in reverse order: a burst of load from
    elsewhere on a shared machine rarely hits one candidate in both, and its choice is cached for good."""
    names, step_s = candidates(device), {}
    for name in (*names, *reversed(names)):
        try:
            step_s[name] = min(step_s.get(name, float("inf")), time_step(model, x, y, Numerics(name), device))
        except RuntimeError:   # a kernel this device lacks in that precision or layout
            continue
    return step_s


def _read_cache(cache: Path) -> dict:
    """The cached choices; a damaged cache counts as empty and is rewritten (it only saves time)."""
    try:
        known = read_json(cache) if cache.is_file() else {}
    except CheckpointError:
        return {}
    valid = lambda r: isinstance(r, dict) and r.get("choice") in NAMES
    return {k: r for k, r in known.items() if valid(r)} if isinstance(known, dict) else {}
