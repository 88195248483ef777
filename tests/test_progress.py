"""Live training: RUN/progress.json written as a run goes, the one-trainer lock, and the dashboard's live parts
(sidebar line, Training page section, the no-model page) while a trainer holds the lock."""
import contextlib
import fcntl
import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import train
from core.io import progress as live
from core.io import store as ckpt

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TINY = ["--epochs", "2", "--image-size", "32", "--batch-size", "16"]


@contextlib.contextmanager
def held_lock(run_dir, pid="4242"):
    """The trainer lock as a live trainer holds it (flock is per open file: this process's own open counts)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / live.LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(pid)
        f.flush()
        yield


@pytest.fixture
def writes(monkeypatch):
    """Every state progress.json is written with, in order."""
    seen = []
    real = live.write_json
    monkeypatch.setattr(live, "write_json", lambda path, data: (seen.append(json.loads(json.dumps(
        ckpt.to_jsonable(data)))), real(path, data)))
    return seen


def test_progress_json_follows_the_run_from_start_to_finish(tiny_phantoms, tmp_path, writes):
    out = tmp_path / "run"
    models = ["knn", "resnet18", "ensemble_soft"]
    assert train.main(["--data", str(tiny_phantoms), "--models", ",".join(models), *TINY, "--out", str(out)]) == 0
    first, last = writes[0], json.loads((out / live.PROGRESS).read_text())
    assert first["status"] == "running" and first["done"] == [] and first["models"] == models
    assert last == writes[-1] and last["status"] == "finished" and last["done"] == models
    assert last["updated_at"] >= last["started_at"] and last["elapsed_s"] >= 0 and last["pid"] > 0
    epochs = [w for w in writes if w["current"] == "resnet18" and w["history"]]
    assert [w["epoch"] for w in epochs] == [1, 2] and all(w["epochs_planned"] == 2 for w in epochs)
    assert [len(w["history"]) for w in epochs] == [1, 2] and {"train_loss", "val_loss", "val_auc", "seconds"} \
        <= set(epochs[-1]["history"][-1])
    assert epochs[0]["done"] == ["knn"], "a model counts as done once its card is written"
    assert not live.trainer_alive(out), "the lock goes with the trainer"


def test_a_failing_fit_leaves_status_failed(tiny_phantoms, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr("core.engine.fit.train_epoch", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        train.main(["--data", str(tiny_phantoms), "--models", "knn,resnet18", *TINY, "--out", str(out)])
    state = json.loads((out / live.PROGRESS).read_text())
    assert state["status"] == "failed" and state["current"] == "resnet18" and state["done"] == ["knn"]


def test_a_second_trainer_on_the_same_folder_exits_2_with_one_line(tiny_phantoms, tmp_path, capsys):
    out = tmp_path / "run"
    assert not live.trainer_alive(out), "no lock file: nobody trains here"
    with held_lock(out, pid="4242"):
        assert live.trainer_alive(out)
        assert train.main(["--data", str(tiny_phantoms), "--models", "knn", "--out", str(out)]) == 2
        assert live.trainer_alive(out), "the refused trainer leaves the holder's lock alone"
    err = capsys.readouterr().err.strip()
    assert err == f"hemolens: another training process (pid 4242) is writing {out}"
    assert not live.trainer_alive(out) and not (out / ckpt.SPLIT).exists()


def running_state(models, done, current="mobilenet_v2"):
    history = [{"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.69 - 0.1 * e, "val_acc": 0.5, "val_auc": 0.6,
                "seconds": 1.0} for e in (1, 2)]
    return {"pid": 1, "started_at": time.time() - 10, "updated_at": time.time(), "status": "running", "models": models, "done": done,
            "current": current, "epoch": 2, "epochs_planned": 5, "history": history, "run_budget_s": None,
            "elapsed_s": 1.0}


@pytest.fixture
def copied_run(tiny_run, tmp_path, monkeypatch):
    """A copy of the suite's run whose progress.json says mobilenet_v2 is training, epoch 2 of 5."""
    run = tmp_path / "checkpoints" / "tiny"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "mobilenet_v2")
    models = ckpt.list_models(run) + ["mobilenet_v2"]
    ckpt.write_json(run / live.PROGRESS, running_state(models, ckpt.list_models(run)))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(run.parent))
    return run


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    at = at.switch_page(page).run() if page else at
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    return " ".join(e.value for kind in ("markdown", "caption", "subheader", "info") for e in getattr(at, kind))


def test_training_page_and_sidebar_show_a_live_trainer(copied_run):
    with held_lock(copied_run):
        at = app("views/training.py")
    sidebar = " ".join(i.value for i in at.sidebar.info)
    assert "Training in progress: mobilenet_v2, epoch 2/5; 4 of 5 models done" in sidebar
    assert "Training in progress" in [s.value for s in at.main.subheader]
    assert len(at.get("progress")) == 1
    charts = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert charts[:2] == ["Validation ROC AUC so far", "Loss so far"]


def test_without_a_live_trainer_nothing_live_is_drawn(copied_run):
    at = app("views/training.py")   # progress.json still says "running", but no process holds the lock: a killed run
    assert not at.sidebar.info and "Training in progress" not in [s.value for s in at.main.subheader]
    assert not at.get("progress")
    assert "Validation ROC AUC so far" not in texts(at)


def test_the_no_model_page_says_training_is_under_way(tmp_path, monkeypatch):
    run = tmp_path / "demo"
    ckpt.write_json(run / live.PROGRESS, running_state(["knn", "resnet18"], [], current="knn"))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    with held_lock(run):
        at = app()
    assert "Training is under way" in texts(at) and "knn, epoch 2/5; 0 of 2 models done" in texts(at) and not at.code
    at = app()
    assert [c.value for c in at.code] == ["python train.py"], "a dead trainer: the how-to-train message"
