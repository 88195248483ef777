"""Numerics per model and machine (core.nets.numerics), the device choice, and what the card records."""
import json

import pytest
import torch

import train
from core.engine import config
from core.io import store as ckpt
from core.nets import numerics as N

from conftest import TINY_RUN_CAM_MODELS


def tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1))


def batch(n=4, size=16):
    return torch.randn(n, 3, size, size), torch.randint(0, 2, (n,)).float()


def test_each_numerics_sets_memory_format_and_autocast():
    model, (x, _) = tiny_net(), batch()
    cl = N.Numerics("bf16_cl")
    assert cl.model(model)[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert cl.input(x).is_contiguous(memory_format=torch.channels_last)
    stacks = torch.randn(2, 5, 3, 8, 8)
    assert cl.input(stacks) is stacks, "a 5-D stack stays contiguous"
    with cl.autocast(torch.device("cpu")):
        assert cl.model(model)(cl.input(x)).dtype == torch.bfloat16
    plain = N.Numerics("fp32")
    assert plain.model(model)[0].weight.is_contiguous()
    with plain.autocast(torch.device("cpu")):
        assert model(x).dtype == torch.float32
    with pytest.raises(ValueError, match="not one of"):
        N.Numerics("fp16")


def test_choice_is_the_fastest_timed_and_is_cached_per_machine(tmp_path):
    cache, model, (x, y) = tmp_path / "numerics.json", tiny_net(), batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen, record = N.choose_numerics(model, x, y, torch.device("cpu"), key="tiny", cache=cache)
    assert not record["cached"] and set(record["step_s"]) == set(N.candidates(torch.device("cpu")))
    assert chosen.name == min(record["step_s"], key=record["step_s"].get)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "timing trains a copy"
    again, cached = N.choose_numerics(model, x, y, torch.device("cpu"), key="tiny", cache=cache)
    assert cached["cached"] and again == chosen
    other, fresh = N.choose_numerics(model, *batch(size=24), torch.device("cpu"), key="tiny", cache=cache)
    assert not fresh["cached"], "another input shape is timed anew"
    assert len(json.loads(cache.read_text())) == 2


def test_a_burst_of_load_during_one_candidates_timing_does_not_decide_the_choice(tmp_path, monkeypatch):
    """bf16_cl is the fastest, but its first timing lands in a burst (10x slower): the second pass, in reverse
    order, times it again and the choice, cached for good, is still bf16_cl."""
    monkeypatch.setattr(N, "candidates", lambda device: N.NAMES)
    speed = {"fp32": 1.0, "fp32_cl": 0.8, "bf16": 0.7, "bf16_cl": 0.5}
    timed = []

    def time_step(model, x, y, numerics, device):
        burst = 10.0 if numerics.name == "bf16_cl" and numerics.name not in timed else 1.0
        timed.append(numerics.name)
        return speed[numerics.name] * burst

    monkeypatch.setattr(N, "time_step", time_step)
    chosen, record = N.choose_numerics(tiny_net(), *batch(), torch.device("cpu"), key="tiny", cache=tmp_path / "n.json")
    assert timed == [*N.NAMES, *reversed(N.NAMES)]
    assert chosen.name == "bf16_cl" and record["step_s"] == speed


def test_a_damaged_cache_counts_as_empty(tmp_path):
    cache = tmp_path / "numerics.json"
    cache.write_text("{not json")
    chosen, record = N.choose_numerics(tiny_net(), *batch(), torch.device("cpu"), key="tiny", cache=cache)
    assert not record["cached"] and json.loads(cache.read_text())
    cache.write_text(json.dumps({"x": {"choice": "fp64"}, "y": 3}))
    assert N._read_cache(cache) == {}


def test_bf16_falls_back_to_fp32_where_the_device_lacks_it(monkeypatch):
    monkeypatch.setattr(N, "candidates", lambda device: ("fp32", "fp32_cl"))
    assert N.usable("bf16_cl", torch.device("cpu")).name == "fp32_cl"
    assert N.usable("bf16", torch.device("cpu")).name == "fp32"
    assert N.usable(None, torch.device("cpu")).name == "fp32", "cards from before numerics ran in fp32"


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert config.resolve_device("auto").type == "cpu"
    with pytest.raises(SystemExit, match="--device mps was asked for"):
        config.resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.resolve_device("auto").type == "cuda"


def test_cards_record_the_numerics_trained_in(tiny_run):
    for name in TINY_RUN_CAM_MODELS:
        record = ckpt.load_card(tiny_run / name)["training"]["numerics"]
        assert record["choice"] in N.NAMES
        assert record["choice"] == min(record["step_s"], key=record["step_s"].get) or record["cached"]
        assert ckpt.load_card(tiny_run / name)["latency"]["numerics"] == record["choice"]


def test_asked_numerics_skip_the_timing(tiny_phantoms, tmp_path):
    out = tmp_path / "run"
    assert train.main(["--data", str(tiny_phantoms), "--models", "resnet18", "--epochs", "1", "--image-size", "32",
                       "--numerics", "fp32_cl", "--out", str(out)]) == 0
    assert ckpt.load_card(out / "resnet18")["training"]["numerics"] == {"choice": "fp32_cl", "asked": True}
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--numerics", "fp16"])
    assert stop.value.code == 2
