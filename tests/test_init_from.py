"""`train.py --init-from RUN` (core.engine.init): networks start from a verified earlier run's weights, and a run
that cannot is refused in one line before anything is trained or written."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import train
from core.engine.config import TrainConfig
from core.engine.fit import build_model
from core.engine.init import planned_architecture, starting_weights
from core.families.cnn import CNN
from core.families.sequence import SEQUENCE
from core.io import store
from core.registry import get_spec

# AlexNet with the GAP head: the cheapest network to train here (a few seconds at its 64 px minimum).
MODEL, HEAD = "alexnet", ["--head", "gap"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return train.main(["--data", str(data), "--models", MODEL, *HEAD, "--epochs", "1", "--image-size", "64",
                       "--batch-size", "16", "--numerics", "fp32", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def source_run(tiny_phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init-from") / "source"
    assert _train(tiny_phantoms, out) == 0
    return out


def _config(**changes) -> TrainConfig:
    return TrainConfig(models=[MODEL], head="gap", **changes)


def test_starting_weights_are_the_source_runs_verified_file(source_run):
    saved = load_file(str(source_run / MODEL / store.WEIGHTS))
    start = starting_weights(source_run, MODEL, _config(), {"head": "gap"})
    assert start.state.keys() == saved.keys() and all(torch.equal(start.state[k], saved[k]) for k in saved)
    card = store.load_card(source_run / MODEL)
    assert start.source == {"run": str(source_run.resolve()), "weights_sha256": card["weights_sha256"]}


def test_a_network_built_with_init_from_holds_those_weights_before_its_first_step(source_run):
    model = build_model(get_spec(MODEL), _config(init_from=str(source_run)), torch.device("cpu"), {"head": "gap"})
    saved = load_file(str(source_run / MODEL / store.WEIGHTS))
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)


def test_a_run_started_from_another_records_it_in_its_card(source_run, tiny_phantoms, tmp_path):
    assert _train(tiny_phantoms, tmp_path / "next", "--init-from", str(source_run)) == 0
    card = json.loads((tmp_path / "next" / MODEL / store.CARD).read_text())
    source = store.load_card(source_run / MODEL)
    assert card["training"]["init_from"] == {"run": str(source_run.resolve()),
                                             "weights_sha256": source["weights_sha256"]}
    assert store.load_card(source_run / MODEL)["training"]["init_from"] is None   # trained from scratch


def _refused(capsys, data: Path, out: Path, *extra: str) -> str:
    """The one stderr line of a refused run that wrote nothing in --out."""
    assert _train(data, out, *extra) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hemolens: "), lines
    assert not out.exists()
    return lines[0]


def test_a_tampered_weights_file_is_refused_in_one_line(source_run, tiny_phantoms, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(source_run, tampered)
    weights = tampered / MODEL / store.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    line = _refused(capsys, tiny_phantoms, tmp_path / "out", "--init-from", str(tampered))
    assert "sha256" in line and line.startswith(f"hemolens: --init-from {tampered}: ")


@pytest.mark.parametrize("flags, reason", [
    (["--head", "stock"], "--head"),                     # stock AlexNet, not the GAP head it trained
    (["--subtypes"], "--subtypes"),                      # six outputs, not one
    (["--windows", "rsna3"], "--windows"),               # three HU windows, not the brain window
    (["--models", "mobilenet_v2"], "no model mobilenet_v2"),
    (["--models", "knn"], "none of the asked models is a network"),
    (["--pretrained"], "--pretrained and --init-from"),
])
def test_a_mismatched_run_is_refused_in_one_line(source_run, tiny_phantoms, tmp_path, capsys, flags, reason):
    assert reason in _refused(capsys, tiny_phantoms, tmp_path / "out", "--init-from", str(source_run), *flags)


def test_a_missing_run_or_the_out_folder_itself_is_refused(source_run, tiny_phantoms, tmp_path, capsys):
    assert "no such run folder" in _refused(capsys, tiny_phantoms, tmp_path / "out", "--init-from",
                                            str(tmp_path / "absent"))
    assert _train(tiny_phantoms, source_run, "--init-from", str(source_run)) == 2
    assert "the --out folder" in capsys.readouterr().err


@pytest.mark.parametrize("family, name, cfg", [(CNN, "alexnet", _config()), (CNN, "resnet18", _config()),
                                               (SEQUENCE, "cnn_gru", _config(stack_size=3))])
def test_planned_architecture_is_what_the_family_fits(monkeypatch, family, name, cfg):
    """check_init_from compares cards before any data is read: with what each family will pass fit_network."""
    given = {}
    monkeypatch.setattr(f"{type(family).__module__}.fit_network",
                        lambda *args, architecture, **kw: given.update(architecture) or {})
    data = SimpleNamespace(manifest=pd.DataFrame({"split": ["train", "val"]}))
    family.fit(get_spec(name), data, cfg, Path("unused"), torch.device("cpu"))
    assert given == planned_architecture(name, cfg)
