"""python -m core.evaluate on the suite's tiny run: its own test split and an external set."""
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sklearn.metrics import roc_auc_score

from core.io import store as ckpt
from core.evaluate import main as evaluate_main
from core.metrics.binary import scan_scores
from core.report import card_markdown
from core.phantom.generate import write_dataset

from conftest import TINY_RUN_MODELS

FILES = {"predictions.csv", "report.json", "leaderboard.csv", "report.md"}


def test_own_test_split_reproduces_training_predictions(tiny_run, tmp_path):
    assert evaluate_main(["--run", str(tiny_run), "--out", str(tmp_path), "--bootstrap", "50"]) == 0
    assert FILES <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dataset"]["kind"] == "test split"
    preds = pd.read_csv(tmp_path / "predictions.csv")
    for model in TINY_RUN_MODELS:   # every family: a CNN, stacks for cnn_gru, features for knn, the ensemble
        saved = pd.read_csv(tiny_run / model / ckpt.PREDICTIONS)
        saved = saved[saved["split"] == "test"].set_index("path")["prob"]
        mine = preds[preds["model"] == model].set_index("path")["prob"]
        np.testing.assert_allclose(mine.loc[saved.index], saved, atol=1e-5)
        card = ckpt.load_card(tiny_run / model)
        entry = report["models"][model]
        assert entry["thresholds"] == card["thresholds"]   # chosen on validation, never on the test set
        assert {"default", "youden", "sens95", "spec95"} <= set(entry["metrics"])
        assert "f1_ci" in entry["metrics"]["default"] and entry["calibration"]
    best = report["best_model"]
    assert report["models"][best]["delong_p_vs_best"] is None
    other = next(m for m in report["models"] if m != best)
    assert 0 <= report["models"][other]["delong_p_vs_best"] <= 1
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["model"]) == set(TINY_RUN_MODELS) and {"roc_auc_lo", "roc_auc_hi"} <= set(board.columns)
    md = (tmp_path / "report.md").read_text()
    assert "not for clinical use" in md and "Misclassified" in md and "Subgroups" in md
    n_wrong = sum(1 for _ in report["misclassified"])
    assert f"Misclassified cases (Youden threshold): {n_wrong}" in md


def test_scan_level_metrics_in_the_report_and_every_card(tiny_run, tmp_path):
    """The tiny run's phantom stacks are its scans: each scores its most suspicious slice, in report.json, report.md,
    leaderboard.csv and (from training) every card's metrics.test.scan."""
    assert evaluate_main(["--run", str(tiny_run), "--out", str(tmp_path), "--bootstrap", "0"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    preds = pd.read_csv(tmp_path / "predictions.csv")
    board = pd.read_csv(tmp_path / "leaderboard.csv").set_index("model")
    for model in TINY_RUN_MODELS:
        rows = preds[preds["model"] == model]
        labels, scores = scan_scores(rows["series"], rows["label"], rows["prob"])
        scan, card = report["models"][model]["scan"], ckpt.load_card(tiny_run / model)
        assert scan["n"] == len(labels) < len(rows) and scan["n_pos"] == labels.sum() >= 2
        assert scan["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
        assert set(scan["at"]) == set(card["thresholds"]) and board.loc[model, "scan_n"] == scan["n"]
        assert scan["at"]["youden"]["threshold"] == card["thresholds"]["youden"]
        trained = card["metrics"]["test"]["scan"]   # the same scans scored at training time
        assert (trained["n"], trained["n_pos"]) == (scan["n"], scan["n_pos"])
        assert trained["roc_auc"] == pytest.approx(scan["roc_auc"], abs=1e-4)
        assert f"Scan level (test split: {scan['n']} scans, {scan['n_pos']} with hemorrhage" in card_markdown(card)
    assert "## Scan level" in (tmp_path / "report.md").read_text()


def test_external_set_uses_every_image_and_drops_training_files(tiny_run, tiny_phantoms, tmp_path):
    external = tmp_path / "external"
    write_dataset(external, n=20, size=64, seed=99, stack_size=1)
    split = pd.read_csv(tiny_run / ckpt.SPLIT)
    leaked = split[split["split"] == "train"].iloc[0]
    folder = "hemorrhage" if leaked["label"] == 1 else "normal"
    shutil.copy(leaked["path"], external / folder / "leaked_copy.png")
    out = tmp_path / "out"
    assert evaluate_main(["--run", str(tiny_run), "--data", str(external), "--out", str(out), "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["kind"] == "external" and report["dataset"]["dropped_seen_in_training"] == 1
    assert report["n_cases"] == 20
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["split"]) == {"external"} and len(preds) == 20 * len(TINY_RUN_MODELS)
    subgroups = report["models"]["resnet18"]["subgroups"]
    assert {s["subgroup"] for s in subgroups} >= {"subtype", "bleed area"}


def test_missing_run_is_one_clear_line(tmp_path, capsys):
    assert evaluate_main(["--run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemolens:") and "\n" not in err


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the suite's run to store evaluations in (the shared one is never written)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "checkpoints" / tiny_run.name))


def test_without_out_the_evaluation_is_stored_with_the_run(run_copy, tmp_path, capsys):
    external = tmp_path / "Head CT (site B)"
    write_dataset(external, n=20, size=64, seed=7, stack_size=1)
    names = ["Head-CT-site-B", "Head-CT-site-B-2"]   # the folder's name made safe, then made unique
    for name in names:
        assert evaluate_main(["--run", str(run_copy), "--data", str(external), "--bootstrap", "0"]) == 0
        stored = run_copy / ckpt.EVALUATIONS / name
        assert {"predictions.csv", "report.json", "report.md"} <= {p.name for p in stored.iterdir()}
        assert capsys.readouterr().out.splitlines()[-1] == f"Stored the evaluation in {stored}."
    assert ckpt.list_evaluations(run_copy) == names
    assert sorted(p.name for p in (run_copy / ckpt.EVALUATIONS).iterdir()) == names, "no temporary folder left"
    report = json.loads((run_copy / ckpt.EVALUATIONS / names[0] / "report.json").read_text())
    assert report["dataset"]["kind"] == "external" and report["n_cases"] == 20
    preds = pd.read_csv(run_copy / ckpt.EVALUATIONS / names[0] / "predictions.csv")
    assert set(preds["model"]) == set(TINY_RUN_MODELS) and set(preds["split"]) == {"external"}


def test_without_out_data_is_required_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--run", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hemolens: --data is required without --out") and "\n" not in err
    assert not (tmp_path / ckpt.EVALUATIONS).exists()


def test_a_failed_or_killed_evaluation_leaves_no_folder_a_reader_lists(tmp_path):
    def fails(folder):
        (folder / "predictions.csv").write_text("model,prob\n")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        ckpt.store_evaluation(tmp_path, tmp_path / "ext", fails)
    assert list((tmp_path / ckpt.EVALUATIONS).iterdir()) == []
    # A killed process's temporary folder (hidden, its writer gone) is never listed, and the next store removes it.
    left = tmp_path / ckpt.EVALUATIONS / f".ext.999999999@{socket.gethostname()}.abc"
    left.mkdir()
    (left / "report.json").write_text("{}")
    (left / "predictions.csv").write_text("model,prob\n")
    (tmp_path / ckpt.EVALUATIONS / "half").mkdir()   # neither file: not an evaluation
    assert ckpt.list_evaluations(tmp_path) == []
    stored = ckpt.store_evaluation(tmp_path, tmp_path / "ext", lambda f: [(f / n).write_text("x") for n in
                                                                          ckpt.EVALUATION_FILES])
    assert stored == tmp_path / ckpt.EVALUATIONS / "ext" and ckpt.list_evaluations(tmp_path) == ["ext"]
    assert not left.exists()
    assert ckpt.evaluation_name("/data/CQ500 ü/") == "CQ500" and ckpt.evaluation_name("/") == "dataset"


def test_a_tiny_external_set_is_evaluated_whole(tiny_run, tmp_path):
    """Four slices, two per class, no groups to split: all four are cases, nothing is held out."""
    from core.evaluate import evaluation_cases
    write_dataset(tmp_path / "tiny", 4, size=96, seed=11, stack_size=1)
    cases, images, facts = evaluation_cases(tiny_run, str(tmp_path / "tiny"), 64)
    assert len(cases) == len(images) == 4 and set(cases["split"]) == {"external"}
    assert facts["kind"] == "external" and sorted(cases["label"]) == [0, 0, 1, 1]
