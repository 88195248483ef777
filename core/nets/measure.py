"""What a network costs: parameters, multiply-accumulates, and latency / throughput on one device."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.nets.numerics import Numerics


def input_shape(model: torch.nn.Module, input_size: int) -> tuple[int, ...]:
    """One prediction's input: a (3, S, S) slice, or a (K, 3, S, S) stack for a sequence model."""
    stack_size = getattr(model, "stack_size", None)
    return (3, input_size, input_size) if stack_size is None else (stack_size, 3, input_size, input_size)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, input_size: int) -> float:
    """Multiply-accumulates (G) of one prediction, counted on a real run (conv, linear, matmul)."""
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape(model, input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()   # batch-norm statistics untouched, and batch 1 is legal everywhere
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: torch.nn.Module, input_size: int, device: str | torch.device = "cpu",
                    warmup: int = 3, repeats: int = 20, batch: int = 32, batch_repeats: int = 3,
                    numerics: Numerics = Numerics()) -> dict:
    """Batch-1 p50/p95 in ms after warm-up, and predictions/s at `batch` (a stack counts as one)."""
    device = torch.device(device)
    model = numerics.model(model.to(device).eval())
    shape = input_shape(model, input_size)
    stack_size = shape[0] if len(shape) == 4 else None
    one = numerics.input(torch.randn(1, *shape, device=device))
    many = numerics.input(torch.randn(batch, *shape, device=device))
    times = []
    with torch.inference_mode(), numerics.autocast(device):
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
            "throughput_img_s": float(throughput), "batch": batch, "stack_size": stack_size,
            "numerics": numerics.name}
