"""Latency and throughput of every model of a run on this machine.

    python -m core.benchmark --run checkpoints/RUN [--variants fp32,fp32_cl,bf16,bf16_cl,compile] [--size native]

fp32 eager is the baseline, always measured first; the other numerics and torch.compile are measured
in the same process right after it and reported as ratios, because absolute figures on a shared machine drift. Each model is
measured in its own child process so that peak memory (max RSS, or CUDA max allocated) is its own.
The figures are written back into each card under "benchmark".
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
from pathlib import Path

import torch

from core.cli import Parser, name_list
from core.io import store as ckpt
from core.families import family_of_card
from core.nets.build import load_network
from core.nets.measure import count_gmacs, measure_latency
from core.nets.numerics import NAMES, Numerics

VARIANTS = (*NAMES, "compile")   # numerics (core.nets.numerics), and torch.compile of the fp32 model


def _measure(model_dir: str, device: str, variants: list[str], size_mode: str, queue) -> None:
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loaded = load_network(model_dir, device)
    card = loaded.card
    size = card["native_input_size"] if size_mode == "native" else card["input_size"]
    gmacs = count_gmacs(loaded.model, size)
    out = {"model": card["model"], "device": device, "input_size": size, "params": card["params"],
           "gmacs": gmacs, "size_bytes": card["size_bytes"]}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for variant in variants:
        model = loaded.model
        if variant == "compile":
            model = torch.compile(model)
        out[variant] = measure_latency(model, size, device, numerics=Numerics("fp32" if variant == "compile" else variant),
                                       warmup=5 if variant == "compile" else 3)
    out["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                             else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    queue.put(out)


def benchmark_model(model_dir: Path, device: str, variants: list[str], size_mode: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(str(model_dir), device, variants, size_mode, queue))
    proc.start()
    result = queue.get()
    proc.join()
    base = result.get("fp32")
    for variant in variants:
        if base and variant != "fp32":
            result[variant]["speedup_vs_fp32_b1"] = base["batch1_ms_p50"] / result[variant]["batch1_ms_p50"]
            result[variant]["speedup_vs_fp32_b32"] = result[variant]["throughput_img_s"] / base["throughput_img_s"]
    return result


def main(argv=None) -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--models", type=name_list, help="comma-separated subset")
    p.add_argument("--variants", type=name_list, default="fp32,fp32_cl,bf16,bf16_cl,compile")
    p.add_argument("--size", choices=["trained", "native"], default="native",
                   help="input size: each model's native size (default) or the size it was trained at")
    args = p.parse_args(argv)
    run = Path(args.run)
    # Classical pipelines and ensembles have no network to compile; their latency is in their cards.
    names = args.models or [
        m for m in ckpt.list_models(run) if family_of_card(ckpt.load_card(run / m)).is_network]
    variants = ["fp32", *(v for v in args.variants if v != "fp32")]
    if not names or any(v not in VARIANTS for v in variants):
        print(f"hemolens: nothing to benchmark in {run} (or unknown variant; choose from {VARIANTS})", file=sys.stderr)
        return 2
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"{'model':<20}{'dev':>5}{'px':>5}{'p50 ms':>9}{'p95 ms':>9}{'img/s@32':>10}"
          + "".join(f"{v + ' x':>12}" for v in variants if v != "fp32") + f"{'GMACs':>8}{'MB peak':>9}")
    for name in names:
        card = ckpt.load_card(run / name)
        results = {}
        for device in devices:
            r = benchmark_model(run / name, device, variants, args.size)
            results[device] = r
            e = r["fp32"]
            print(f"{name:<20}{device:>5}{r['input_size']:>5}{e['batch1_ms_p50']:>9.1f}{e['batch1_ms_p95']:>9.1f}"
                  f"{e['throughput_img_s']:>10.1f}"
                  + "".join(f"{r[v]['speedup_vs_fp32_b1']:>12.2f}" for v in variants if v != "fp32")
                  + f"{r['gmacs']:>8.2f}{r['peak_memory_mb']:>9.0f}", flush=True)
        card["benchmark"] = results
        ckpt.write_json(run / name / ckpt.CARD, card)
    return 0


if __name__ == "__main__":
    sys.exit(main())
