"""demo.py, the launcher behind `make demo`: it starts a detached trainer, waits for the first model card,
then hands over to streamlit; a trainer that stops before any model gives one line and exit 2."""
import sys
import time

import pytest

import demo
from core.io import store as ckpt
from core.io.progress import trainer_alive


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


def test_a_complete_demo_run_is_served_at_once(launcher, monkeypatch):
    run, execs = launcher
    (run / "ensemble_stack").mkdir(parents=True)
    (run / "ensemble_stack" / ckpt.CARD).write_text("{}")
    monkeypatch.setattr(demo, "TRAIN", ["false"])   # would fail the test if started
    demo.main()
    assert execs == [demo.STREAMLIT] and not (run / "train.log").exists()
