"""The training engine end to end on tiny phantoms: run-folder contract, resume after kill -9, DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import train
from core.engine import fit
from core.engine.config import TrainConfig
from core.io import store as ckpt
from core.io.weights import load_weights
from core.io.framing import framing_of
from core.nets.build import load_network
from core.nets.numerics import usable
from core.nets.predict import predict_probs
from core.presets import PAINTED_RECIPE, PAINTED_WARMUP, WARMUP_DIR
from core.registry import get_spec

from conftest import TINY_RUN_MODELS

REPO = Path(__file__).resolve().parents[1]
CARD_KEYS = {"schema_version", "model", "display_name", "family", "classes", "input_size", "mean", "std", "window",
             "thresholds", "metrics", "params", "gmacs", "size_bytes", "weights_sha256", "latency", "training",
             "dataset", "versions", "created_at"}


@pytest.fixture
def phantoms(tiny_phantoms) -> Path:
    return tiny_phantoms


@pytest.fixture
def run_dir(tiny_run) -> Path:
    return tiny_run


def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_run_folder_matches_the_contract(run_dir):
    assert (run_dir / "split.csv").is_file() and (run_dir / "leakage.json").is_file()
    assert ckpt.list_models(run_dir) == sorted(TINY_RUN_MODELS)
    split = pd.read_csv(run_dir / "split.csv")
    for name in TINY_RUN_MODELS:   # one model of each family, all in the same contract
        folder = run_dir / name
        card = json.loads((folder / "card.json").read_text())
        network = card["family"] in ("cnn", "sequence")
        assert (CARD_KEYS if network else CARD_KEYS - {"mean", "std", "window", "gmacs"}) <= set(card)
        assert set(card["metrics"]) == {"val", "test"} and 0 <= card["metrics"]["test"]["roc_auc"] <= 1
        assert {"default", "youden", "sens95"} <= set(card["thresholds"])
        assert card["latency"]["batch1_ms_p50"] > 0 and card["versions"]["torch"]
        assert not network or card["gmacs"] > 0
        assert card["dataset"]["counts"]["test"]["n"] == int((split["split"] == "test").sum())
        history = pd.read_csv(folder / "history.csv")
        assert list(history.columns[:10]) == ckpt.HISTORY_COLUMNS[:10]
        assert history["epoch"].tolist() == ([1, 2] if network else [1])
        preds = pd.read_csv(folder / "predictions.csv")
        assert list(preds.columns[:5]) == ["split", "id", "path", "label", "prob"]
        assert set(preds["split"]) == {"val", "test"}
        assert len(preds) == int(split["split"].isin(["val", "test"]).sum())
        assert preds["prob"].between(0, 1).all()
        assert not list(folder.glob("last.*")) and not list(run_dir.rglob("*.partial"))


def test_loaded_model_reproduces_saved_predictions(run_dir):
    loaded = load_network(run_dir / "resnet18")
    preds = pd.read_csv(run_dir / "resnet18" / "predictions.csv")
    from core.data.decode import decode_images
    test = preds[preds["split"] == "test"]
    images = decode_images(test["path"].tolist(), size=loaded.card["input_size"],
                           framing=framing_of(loaded.card)).images   # framed as in training (--data: the head)
    # In the numerics it was trained and scored in (bf16 where the timing chose it: equal to float noise).
    numerics = usable(loaded.card["training"]["numerics"]["choice"], torch.device("cpu"))
    probs = predict_probs(numerics.model(loaded.model), images, loaded.card["mean"], loaded.card["std"],
                          numerics=numerics)
    np.testing.assert_allclose(probs, test["prob"].to_numpy(), atol=1e-5)


def test_tampered_truncated_and_corrupt_checkpoints_are_refused(run_dir, tmp_path):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(run_dir / "mobilenet_v2", folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        load_network(folder)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        load_network(folder)
    # Without a recorded hash, a truncated file still fails cleanly as safetensors.
    with pytest.raises(ckpt.CheckpointError, match="safetensors"):
        load_weights(weights, expected_sha256=None)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="JSON"):
        load_network(folder)


def test_bad_data_gives_one_clear_line(tmp_path, capsys):
    (tmp_path / "normal").mkdir()
    from PIL import Image
    Image.new("L", (8, 8)).save(tmp_path / "normal" / "a.png")
    assert train.main(["--data", str(tmp_path), "--models", "resnet18", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemolens:") and "one class" in err and "\n" not in err
    assert train.main(["--models", "resnet999", "--out", str(tmp_path / "o")]) == 2


def test_kill_9_then_resume_continues_from_last_completed_epoch(phantoms, tmp_path):
    out = tmp_path / "run"
    args = ["train.py", "--data", str(phantoms), "--models", "resnet18", "--epochs", "4", "--image-size", "64",
            "--batch-size", "8", "--out", str(out), "--device", "cpu"]
    proc = _cli(*args)
    deadline = time.time() + 240
    while not (out / "resnet18" / "last.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "resnet18" / "last.json").read_text())["epoch"]
    assert 1 <= done < 4 and not (out / "resnet18" / "card.json").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")
                and p.name not in {"split.csv", "leakage.json", "run.json", "progress.json", "last.json",
                                     "last.safetensors"}]
    resumed = _cli(*args, "--resume")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {done}" in log
    history = pd.read_csv(out / "resnet18" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert load_network(out / "resnet18").card["training"]["epochs"] == 4


def test_torchrun_ddp_on_cpu_writes_a_valid_run(phantoms, tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*torchrun, "train.py", "--data", str(phantoms), "--models", "resnet18", "--epochs", "1",
                             "--image-size", "32", "--batch-size", "8", "--out", str(out), "--device", "cpu"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    card = load_network(out / "resnet18").card
    assert card["training"]["world_size"] == 2
    assert ckpt.list_models(out) == ["resnet18"]


def test_time_budget_plans_epochs_from_the_first_one():
    from core.engine.budget import planned_epochs
    assert [planned_epochs(8, 45, s) for s in (5, 10, 15, 17.9, 18.1, 23, 400)] == [8, 5, 3, 3, 2, 2, 2]
    assert planned_epochs(8, None, 400) == 8   # no budget: as asked


def test_time_budget_cuts_a_run_short(phantoms, tmp_path):
    out = tmp_path / "budget"
    assert train.main(["--data", str(phantoms), "--models", "resnet18", "--epochs", "6", "--image-size", "32",
                       "--batch-size", "16", "--time-budget", "0.001", "--out", str(out), "--device", "cpu"]) == 0
    card = ckpt.load_card(out / "resnet18")
    assert card["training"]["epochs"] == card["training"]["epochs_planned"] == 2
    assert card["training"]["time_budget_s"] == 0.001
    assert pd.read_csv(out / "resnet18" / ckpt.HISTORY)["epoch"].tolist() == [1, 2]


def test_run_budget_shares_the_time_left_in_proportion_to_own_budgets():
    from core.engine.budget import FIXED_COST_GUESS_S, RunBudget
    budget = RunBudget(seconds=600, started=100.0)
    own = [45, 95, 30]
    # On schedule every network keeps its own budget.
    assert budget.share(45, own, now=100.0) == 45 and budget.share(30, own[2:], now=150.0) == 30
    # Behind: shares in proportion to own budgets, filling exactly the time left after fixed costs.
    now = 100.0 + 600 - 3 * FIXED_COST_GUESS_S - 85   # 85 s left for 170 s of budgets
    shares = [budget.share(b, own, now=now) for b in own]
    assert shares == pytest.approx([22.5, 47.5, 15.0])
    # Measured fixed costs replace the guess; past the end there is nothing left to share.
    budget.record(wall_s=40.0, training_s=28.0)
    budget.record(wall_s=30.0, training_s=30.0)
    assert budget.fixed_costs == [12.0, 0.0]
    assert budget.share(30, [30], now=100.0 + 600 - 6 - 10) == pytest.approx(10.0)
    assert budget.share(45, own, now=10_000.0) == 0.0
    # Networks without a budget of their own share equally; with others, they weigh as their mean.
    assert budget.share(None, [None, None], now=100.0) == pytest.approx((600 - 2 * 6) / 2)
    assert budget.share(None, [None, 20, 40], now=100.0) == pytest.approx((600 - 3 * 6) * 30 / 90)


def test_run_budget_cuts_networks_and_a_resumed_one_keeps_the_budget_it_was_given(phantoms, tmp_path):
    out = tmp_path / "budget"
    argv = ["--data", str(phantoms), "--models", "resnet18,mobilenet_v2", "--epochs", "4", "--image-size", "32",
            "--batch-size", "16", "--run-budget", "0.5", "--out", str(out), "--device", "cpu"]
    assert train.main(argv) == 0
    for name in ("resnet18", "mobilenet_v2"):
        training = ckpt.load_card(out / name)["training"]
        assert training["run_budget_s"] == 0.5 and training["time_budget_s"] == 0.0
        assert training["epochs"] == training["epochs_planned"] == 2   # whole epochs, at least two
    # Killed after its last epoch, then resumed with time to spare: it plans what the killed run did.
    import core.engine.fit
    from core.data.splits import prepare
    from core.engine.config import TrainConfig
    from core.run import train_run
    cfg = TrainConfig(models=["resnet18"], out=str(tmp_path / "resumed"), epochs=2, image_size=32, batch_size=16,
                      device="cpu", run_budget_s=0.5)
    prepare_fn = lambda size: prepare(phantoms, size, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core.engine.fit, "finish_network", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, phantoms, prepare_fn)
    card = train_run(TrainConfig(**{**cfg.__dict__, "epochs": 4, "run_budget_s": 1e6, "resume": True}),
                     phantoms, prepare_fn)["resnet18"]
    assert card["training"]["time_budget_s"] == 0.0 and card["training"]["epochs"] == 2


def test_per_model_settings_replace_the_run_settings_for_that_model_only(phantoms, tmp_path):
    from core.data.splits import prepare
    from core.engine.config import TrainConfig
    from core.run import train_run
    cfg = TrainConfig(models=["resnet18", "mobilenet_v2"], out=str(tmp_path / "run"), epochs=3, image_size=32,
                      batch_size=16, device="cpu", per_model={"resnet18": {"image_size": 40, "time_budget_s": 0.001}})
    cards = train_run(cfg, phantoms, lambda size: prepare(phantoms, size, seed=0))
    assert cards["resnet18"]["input_size"] == 40 and cards["mobilenet_v2"]["input_size"] == 32
    assert cards["resnet18"]["training"]["epochs"] == 2 and cards["mobilenet_v2"]["training"]["epochs"] == 3
    assert cards["resnet18"]["training"]["recipe"] == {"image_size": 40, "time_budget_s": 0.001}
    assert cards["mobilenet_v2"]["training"]["recipe"] == {}


def test_demo_recipe_applies_only_to_the_demo_as_shipped(phantoms, monkeypatch):
    from core.presets import demo_preset
    seen = {}
    monkeypatch.setattr(train, "phantom_root", lambda *a, **k: phantoms)
    monkeypatch.setattr(train, "train_run",
                        lambda cfg, root, prepare_fn, **kw: seen.setdefault("cfg", cfg) and {})
    preset = demo_preset("cpu")
    for argv, recipe in ((["--models", "vgg16"], preset.per_model), (["--epochs", "3"], {}),
                         (["--image-size", "64"], {}), (["--lr", "1e-3"], {}), (["--data", str(phantoms)], {}),
                         (["--time-budget", "60"], {})):
        seen.clear()
        assert train.main([*argv, "--device", "cpu"]) == 0
        assert seen["cfg"].per_model == recipe, argv
        # Unaugmented epochs of 448 fresh images belong to the phantom demo; real data gets the defaults.
        demo = "--data" not in argv
        assert (seen["cfg"].augment, seen["cfg"].epoch_size) == ((False, 448) if demo else (True, None)), argv
        # The whole-run budget belongs to the demo's own settings, like the per-network ones.
        shipped = argv[0] in ("--models", "--image-size", "--lr")
        assert seen["cfg"].run_budget_s == (preset.run_budget_s if shipped else None), argv
    # The CPU demo's AlexNet and VGGs pool their features into one Linear (their MLPs make every step slow).
    assert all(preset.per_model[m]["head"] == "gap" for m in ("alexnet", "vgg16", "vgg16_bn"))
    from core.registry import CNN_NAMES   # every CNN, in the CPU demo's own order
    assert sorted(m for m in preset.models if m in CNN_NAMES) == sorted(CNN_NAMES)
    assert demo_preset("cuda").per_model == {} and demo_preset("cuda").augment
    for flag, augment in (("--augment", True), ("--no-augment", False)):
        seen.clear()
        assert train.main([flag, "--device", "cpu"] + (["--data", str(phantoms)] if augment else [])) == 0
        assert seen["cfg"].augment is augment


class _InputRecorder(torch.nn.Module):
    """One logit per image from a learnable bias; keeps every batch it was given."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.bias.expand(len(x), 1)


def test_an_epoch_can_stop_after_some_steps_and_augmentation_can_be_off():
    from torch.utils.data import DataLoader, RandomSampler
    from core.data.decode import SliceDataset, to_model_input
    from core.nets.cnn import IMAGENET_MEAN, IMAGENET_STD
    from core.engine.loop import Training, train_one_epoch
    images = torch.randint(0, 256, (40, 32, 32), dtype=torch.uint8).numpy()
    ds = SliceDataset(images, np.arange(40) % 2, torch.device("cpu"))
    loader = DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(0)),
                        collate_fn=SliceDataset.collate)
    runs = {}
    for steps, augment in ((3, False), (None, True)):
        model = _InputRecorder()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        train_one_epoch(Training(cfg=TrainConfig(models=[], augment=augment), device=torch.device("cpu"), trainee=model,
                                 loader=loader, optimizer=opt, scheduler=sched, loss_fn=torch.nn.BCEWithLogitsLoss(),
                                 steps_per_epoch=steps), 1)
        runs[augment] = (sched.last_epoch, model.inputs)
    assert runs[False][0] == 3 and runs[True][0] == len(loader) == 10
    plain = to_model_input(torch.as_tensor(images).unsqueeze(1), IMAGENET_MEAN, IMAGENET_STD)

    def matches_a_plain_image(x):   # each input is exactly one of the unaugmented slices
        return all(any(torch.equal(one, p) for p in plain) for one in x)

    assert all(matches_a_plain_image(x) for x in runs[False][1])
    assert not any(matches_a_plain_image(x) for x in runs[True][1])


def test_summary_flags_models_whose_test_auc_ci_includes_chance(capsys):
    def card(auc, lo, hi):
        return {"metrics": {"test": {"roc_auc": auc, "roc_auc_ci": [lo, hi], "accuracy": 0.5}},
                "training": {"seconds": 1.0}, "latency": {"batch1_ms_p50": 1.0}}
    train.print_summary({"good": card(0.8, 0.7, 0.9), "weak": card(0.58, 0.45, 0.71),
                         "one_class": card(float("nan"), float("nan"), float("nan"))})
    out = capsys.readouterr().out
    assert "0.70-0.90 " in out and "0.45-0.71*" in out
    assert out.strip().splitlines()[-1] == ("* not clearly above chance: the test AUC's 95% CI includes 0.5 "
                                            "(weak, one_class)")


def _session(data, epochs: int):
    from core.data.decode import SliceDataset
    from core.engine.config import TrainConfig
    from core.engine.fit import build_session
    cfg = TrainConfig(models=["resnet18"], epochs=epochs, image_size=32, device="cpu")
    train_ds = SliceDataset(data.images, data.manifest["label"].to_numpy())
    return build_session(get_spec("resnet18"), train_ds, cfg, torch.device("cpu"), {})


def test_a_models_initial_weights_do_not_depend_on_the_models_before_it(phantoms):
    from core.data.splits import prepare
    data = prepare(phantoms, 32, seed=0)
    initial = []
    for before in (1, 2):   # the global RNG as two different earlier models would leave it
        torch.manual_seed(before)
        initial.append(_session(data, 1).model.state_dict())
    assert initial[0].keys() == initial[1].keys()
    assert all(torch.equal(initial[0][k], initial[1][k]) for k in initial[0])


def test_cudnn_autotuning_only_for_runs_long_enough_to_pay_it_back(phantoms, monkeypatch):
    from core.data.splits import prepare
    from core.engine.fit import CUDNN_AUTOTUNE_MIN_STEPS
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)   # restored after the test
    data = prepare(phantoms, 32, seed=0)
    seen = []
    for epochs in (2, CUDNN_AUTOTUNE_MIN_STEPS):   # every epoch has at least one step
        _session(data, epochs)
        seen.append(torch.backends.cudnn.benchmark)
    assert seen == [False, True]


def _epochs_run(monkeypatch, argv: list[str]):
    """The progress of run_epochs for the flags argv, validation AUCs best at epoch 2 and better again at 6."""
    aucs = iter([0.6, 0.7, 0.65, 0.7, 0.69, 0.9, 0.9])

    def epoch(session, *_):
        return {"epoch": len(progress.history) + 1, "val_auc": next(aucs), "wall_s": 1.0, "train_loss": 0.5,
                "img_per_s": 1.0, "data_wait_s": 0.0, "seconds": 1.0}

    monkeypatch.setattr(fit, "train_epoch", epoch)
    cfg = train.resolve_config(train.parse_args(["--data", "x", "--epochs", "7", *argv]), train.demo_preset("cpu"),
                               ["resnet18"])
    session = SimpleNamespace(cfg=cfg, plan=[7], device=torch.device("cpu"), name="resnet18",
                              model=torch.nn.Linear(1, 1))
    progress = fit.Progress()
    fit.run_epochs(session, progress, None, None, None, SimpleNamespace(after_epoch=lambda *a, **k: 0.0))
    return cfg, progress


def test_a_network_stops_after_patience_epochs_without_a_better_validation_auc(monkeypatch):
    cfg, progress = _epochs_run(monkeypatch, ["--patience", "3"])
    assert cfg.patience == 3 and TrainConfig(models=[]).patience == 4
    assert [row["epoch"] for row in progress.history] == [1, 2, 3, 4, 5]
    assert progress.best_auc == 0.7 and progress.stale == 3


def test_painted_bleeds_train_every_epoch_unless_a_patience_is_given(monkeypatch):
    cfg, progress = _epochs_run(monkeypatch, ["--synthetic-bleeds"])
    assert cfg.patience is None and len(progress.history) == 7 and progress.best_auc == 0.9
    cfg, progress = _epochs_run(monkeypatch, ["--synthetic-bleeds", "--patience", "3"])
    assert cfg.patience == 3 and len(progress.history) == 5


@pytest.mark.parametrize("dropout, expected", [(None, 0.5), (0.0, 0.0)])
def test_a_recipe_dropout_sets_every_dropout_layer_and_none_keeps_the_architectures(dropout, expected):
    model = fit.build_model(get_spec("alexnet"), TrainConfig(models=["alexnet"], dropout=dropout), torch.device("cpu"),
                            {})
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(rates) == 2 and set(rates) == {expected}


def _budgeted_epochs(monkeypatch, walls: list[float], writes: list[float]) -> list[dict]:
    """The history of a network with a 45 s budget whose epochs take `walls` and resume writes `writes` seconds."""
    walls, writes = iter(walls), iter(writes)

    def epoch(session, *_):
        return {"epoch": len(progress.history) + 1, "val_auc": 0.7, "wall_s": next(walls), "train_loss": 0.5,
                "img_per_s": 1.0, "data_wait_s": 0.0, "seconds": 1.0}

    monkeypatch.setattr(fit, "train_epoch", epoch)
    cfg = TrainConfig(models=["resnet18"], epochs=8, time_budget_s=45, patience=None)
    session = SimpleNamespace(cfg=cfg, plan=[8], device=torch.device("cpu"), name="resnet18",
                              model=torch.nn.Linear(1, 1))
    progress = fit.Progress()
    fit.run_epochs(session, progress, None, None, None, SimpleNamespace(after_epoch=lambda *a, **k: next(writes)))
    return progress.history


def test_a_budgeted_network_replans_on_its_mean_epoch_so_later_slow_epochs_end_it_sooner(monkeypatch):
    # Planned on the first epoch alone: 5 epochs, 130 s of a 45 s budget.
    assert len(_budgeted_epochs(monkeypatch, [10.0, 30.0, 30.0, 30.0, 30.0], [0.0] * 5)) == 2


def test_a_budget_pays_for_the_resume_writes(monkeypatch):
    history = _budgeted_epochs(monkeypatch, [10.0] * 5, [20.0, 0.0, 0.0, 0.0, 0.0])
    assert len(history) == 2 and history[0]["wall_s"] == 30.0   # without the write: 4 epochs of 10 s


def test_the_painted_recipe_trains_at_its_measured_batch_on_a_gpu_too():
    cfg = train.resolve_config(train.parse_args(["--data", "x", "--synthetic-bleeds"]), train.demo_preset("cuda"),
                               list(PAINTED_RECIPE["models"]))
    assert (cfg.batch_size, cfg.image_size, cfg.epochs, cfg.patience) == (16, 128, 24, None)
    assert cfg.per_model == {"mobilenet_v2": {"lr": 2e-3}}   # the painted recipe's own rate for MobileNetV2
    args = train.parse_args(["--data", "x", "y", "--synthetic-bleeds"])
    assert train.model_names(args, train.demo_preset("cpu")) == list(PAINTED_RECIPE["models"]) == cfg.models
    assert train.resolve_config(train.parse_args(["--data", "x", "--synthetic-bleeds", "--lr", "1e-3"]),
                                train.demo_preset("cpu"), ["mobilenet_v2"]).per_model == {}
    plain = train.resolve_config(train.parse_args(["--data", "x"]), train.demo_preset("cuda"), ["resnet18"])
    assert plain.batch_size == train.demo_preset("cuda").batch_size != 16


def test_a_short_budgeted_network_writes_no_resume_state(tmp_path):
    saver = fit.ResumeSaver(tmp_path)
    session = SimpleNamespace(cfg=TrainConfig(models=["resnet18"], time_budget_s=fit.RESUME_MIN_BUDGET_S - 1))
    progress = SimpleNamespace(history=[{"seconds": 50.0}])
    assert saver.after_epoch(session, progress, last=False) == 0.0 and not list(tmp_path.iterdir())


def test_a_gap_head_run_records_it_and_the_saved_network_loads_with_it(tiny_phantoms, tmp_path):
    out = tmp_path / "gap"
    assert train.main(["--data", str(tiny_phantoms), "--models", "alexnet,resnet18", "--head", "gap", "--epochs", "1",
                       "--image-size", "64", "--batch-size", "16", "--out", str(out)]) == 0
    alexnet, resnet = (ckpt.load_card(out / m) for m in ("alexnet", "resnet18"))
    assert alexnet["architecture"] == {"head": "gap"} and "architecture" not in resnet   # ResNets pool already
    loaded = load_network(out / "alexnet")
    assert isinstance(loaded.model.classifier, torch.nn.Linear) and loaded.model.classifier.in_features == 256
    with torch.inference_mode():
        assert loaded.model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


@pytest.mark.parametrize("flags, warms", [([], True), (["--warmup-phantoms", "0"], False),
                                          (["--init-from", "elsewhere"], False), (["--pretrained"], False),
                                          (["--models", "svm,knn"], False)])
def test_a_painted_run_warms_its_networks_up_on_phantoms_unless_told_where_else_to_start(flags, warms):
    args = train.parse_args(["--data", "x", "--synthetic-bleeds", "--head", "gap", "--seed", "3", "--out", "o",
                             *flags])
    cfg = train.resolve_config(args, train.demo_preset("cpu"), train.model_names(args, train.demo_preset("cpu")))
    argv = train.warmup_argv(args, cfg)
    assert (argv is not None) == warms
    if warms:   # the same networks at the same size, head, windows and seed: --init-from accepts them
        warm = train.parse_args(argv)
        assert (warm.models, warm.image_size, warm.head, warm.windows, warm.seed, warm.data) == (
            list(PAINTED_RECIPE["models"]), cfg.image_size, "gap", cfg.windows, 3, None)
        assert warm.out == str(Path("o") / WARMUP_DIR) and warm.phantoms == PAINTED_WARMUP["phantoms"]
