"""demo.py, the launcher behind `make demo`: it starts a detached trainer, waits for the first model card,
then hands over to streamlit; a trainer that stops before any model gives one line and exit 2. The phantom run's
last step: its evaluation on other-scanner phantoms, which the Leaderboard's internal-vs-external table shows."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import demo
import train
from core import presets
from core.io import store as ckpt
from core.io.progress import trainer_alive
from core.phantom.scanner import OTHER


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """demo.py aimed at a temporary run folder, its exec of streamlit recorded instead of done."""
    run = tmp_path / "demo"
    monkeypatch.setattr(demo, "RUN", run)
    monkeypatch.setattr(demo, "LOG", run / "train.log")
    monkeypatch.setattr(demo, "REPORT_EVERY_S", 0)
    execs = []
    monkeypatch.setattr(demo.os, "execv", lambda path, argv: execs.append(argv))
    monkeypatch.chdir(demo.REPO)
    return run, execs


def test_the_app_starts_once_the_detached_trainer_has_a_model(launcher, tiny_phantoms, monkeypatch, capsys):
    run, execs = launcher
    monkeypatch.setattr(demo, "TRAIN", [sys.executable, "train.py", "--data", str(tiny_phantoms), "--models",
                                        "knn", "--out", str(run)])
    demo.main()
    assert execs == [demo.STREAMLIT] and ckpt.list_models(run)
    assert "training the demo in the background" in capsys.readouterr().out
    while trainer_alive(run):   # the trainer outlives the launcher; let it finish before tmp_path goes
        time.sleep(0.2)
    assert ckpt.list_models(run) == ["knn"] and "run folder:" in (run / "train.log").read_text()


def test_a_trainer_that_stops_before_any_model_is_one_line_and_exit_2(launcher, monkeypatch, capsys):
    run, execs = launcher
    monkeypatch.setattr(demo, "TRAIN", [sys.executable, "-c", "print('hemolens: no such data'); raise SystemExit(2)"])
    with pytest.raises(SystemExit) as stop:
        demo.main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and not execs and "\n" not in err
    assert err.startswith("hemolens: the demo trainer stopped before its first model (hemolens: no such data)")


def _complete_models(run: Path) -> None:
    (run / "ensemble_stack").mkdir(parents=True)
    (run / "ensemble_stack" / ckpt.CARD).write_text("{}")


def test_a_complete_demo_run_is_served_at_once(launcher, monkeypatch):
    run, execs = launcher
    _complete_models(run)
    (run / ckpt.EVALUATIONS / OTHER.set_name).mkdir(parents=True)
    for name in ckpt.EVALUATION_FILES:
        (run / ckpt.EVALUATIONS / OTHER.set_name / name).write_text("{}")
    monkeypatch.setattr(demo, "TRAIN", ["false"])   # would fail the test if started
    demo.main()
    assert execs == [demo.STREAMLIT] and not (run / "train.log").exists()


def test_a_demo_run_without_its_other_scanner_evaluation_resumes_its_trainer(launcher, monkeypatch, capsys):
    run, execs = launcher
    _complete_models(run)
    monkeypatch.setattr(demo, "TRAIN", [sys.executable, "-c", "print('resumed')"])
    demo.main()
    assert execs == [demo.STREAMLIT] and "training the demo in the background" in capsys.readouterr().out
    while trainer_alive(run) or "resumed" not in (run / "train.log").read_text():
        time.sleep(0.2)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """The demo's flow at its cheapest: `train.py` without --data (one classical model, 60 phantoms)."""
    root = tmp_path_factory.mktemp("demo_flow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(presets, "PHANTOM_CACHE", root / "phantoms")
        run = root / "checkpoints" / "demo"
        assert train.main(["--models", "knn", "--phantoms", "60", "--device", "cpu", "--out", str(run)]) == 0
        yield run


def test_a_finished_phantom_run_stores_its_evaluation_on_other_scanner_phantoms(phantom_run):
    assert ckpt.list_evaluations(phantom_run) == [OTHER.set_name]
    report = json.loads((phantom_run / ckpt.EVALUATIONS / OTHER.set_name / "report.json").read_text())
    assert report["dataset"]["kind"] == "external" and set(report["models"]) == {"knn"}
    assert report["n_cases"] == 60 // 3 and report["n_hemorrhage"] == 10   # a third of the phantoms, as twins
    # Fresh heads, imaged by the other scanner: none of the run's own files, the other field of view.
    source = Path(report["dataset"]["source"])
    assert source.name == OTHER.set_name and report["dataset"]["dropped_seen_in_training"] == 0
    assert np.allclose(pd.read_csv(source / "labels.csv")["pixel_spacing_mm"], OTHER.fov_mm / presets.PHANTOM_SIZE)
    stored = (phantom_run / ckpt.EVALUATIONS / OTHER.set_name / "report.json").stat().st_mtime
    # --resume of the finished run keeps the evaluation, as its models are the same.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(presets, "PHANTOM_CACHE", source.parents[1])
        assert train.main(["--models", "knn", "--phantoms", "60", "--device", "cpu", "--out", str(phantom_run),
                           "--resume"]) == 0
    assert (phantom_run / ckpt.EVALUATIONS / OTHER.set_name / "report.json").stat().st_mtime == stored
    assert ckpt.list_evaluations(phantom_run) == [OTHER.set_name]


def test_the_leaderboard_shows_the_phantom_run_internal_vs_external(phantom_run, monkeypatch):
    monkeypatch.setenv("CHECKPOINTS_DIR", str(phantom_run.parent))
    at = AppTest.from_file(str(demo.REPO / "dashboard" / "app.py"), default_timeout=90).run()
    at = at.switch_page("views/leaderboard.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Internal vs external" in [s.value for s in at.subheader]
    gaps = at.dataframe[1].value.set_index("Model")
    report = json.loads((phantom_run / ckpt.EVALUATIONS / OTHER.set_name / "report.json").read_text())
    internal = ckpt.load_card(phantom_run / "knn")["metrics"]["test"]["roc_auc"]
    external = report["models"]["knn"]["metrics"]["default"]["roc_auc"]
    assert gaps[f"{OTHER.set_name}: gap"].iloc[0] == pytest.approx(external - internal)
    assert at.sidebar.selectbox(key="dataset").options == ["Test split (this run)",
                                                           f"External: {OTHER.set_name} (20 cases)"]
