"""Inference latency and throughput of one model on one device (eager, inference_mode)."""
from __future__ import annotations

import time

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: torch.nn.Module, input_size: int, device: str | torch.device = "cpu",
                    warmup: int = 3, repeats: int = 20, batch: int = 32, batch_repeats: int = 3,
                    channels_last: bool = False, stack_size: int | None = None) -> dict:
    """Batch-1 p50/p95 in ms after warm-up, and images/s at `batch`.

    stack_size: a sequence model's input, (B, K, 3, S, S) stacks; then a batch-1 call and every
    "image" of the throughput is one stack (one prediction). Stacks stay contiguous (channels_last
    is a 4-D layout); the model's own weights still switch to it."""
    device = torch.device(device)
    model = model.to(device).eval()
    fmt = torch.channels_last if channels_last and stack_size is None else torch.contiguous_format
    shape = (3, input_size, input_size) if stack_size is None else (stack_size, 3, input_size, input_size)
    one = torch.randn(1, *shape, device=device).to(memory_format=fmt)
    many = torch.randn(batch, *shape, device=device).to(memory_format=fmt)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(one)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
        model(many)
        _sync(device)
        start = time.perf_counter()
        for _ in range(batch_repeats):
            model(many)
        _sync(device)
        throughput = batch * batch_repeats / (time.perf_counter() - start)
    return {"device": str(device), "input_size": input_size, "threads": torch.get_num_threads(),
            "batch1_ms_p50": float(np.percentile(times, 50)), "batch1_ms_p95": float(np.percentile(times, 95)),
            "throughput_img_s": float(throughput), "batch": batch, "stack_size": stack_size}
