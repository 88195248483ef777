"""The Leaderboard, Compare and Training pages at more models than their charts show at once: ranking, ties with
the best, the model filter, one colour per model, labels read from the cards."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from streamlit.testing.v1 import AppTest

from core.io import store as ckpt
from core.metrics.stats import delong_test
from core.registry import get_spec
from dashboard import figures

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
# Copies of the tiny run's k-NN under other classical names, their test probabilities set: (name, prob from label).
COPIES = {"svm": lambda y, rng: y.astype(float),                                    # perfect: the best
          "random_forest": lambda y, rng: 0.2 + 0.6 * y + 0.1 * rng.random(len(y)),  # perfect too: tied, p = 1
          "gradient_boosting": lambda y, rng: 1.0 - y}                               # inverted: lower, p ~ 0
BUDGET_CUT = {"run_budget_s": 100.0, "time_budget_s": 5.0, "recipe": {"time_budget_s": 30}}


def _edit_card(model_dir: Path, **training) -> None:
    card = ckpt.load_card(model_dir)
    card["training"].update(training)
    (model_dir / ckpt.CARD).write_text(json.dumps(card))


@pytest.fixture(scope="module")
def wide_copy(tiny_run, tmp_path_factory) -> Path:
    """The tiny run plus three classical copies (8 models: more than the filter's five), and ResNet-18 recorded as
    cut short by a run budget (its share 5 s of its own 30 s)."""
    run = tmp_path_factory.mktemp("wide") / "checkpoints" / "wide"
    shutil.copytree(tiny_run, run)
    rng = np.random.default_rng(0)
    for name, probs in COPIES.items():
        shutil.copytree(run / "knn", run / name)
        card = {**ckpt.load_card(run / name), "model": name, "display_name": get_spec(name).display_name}
        (run / name / ckpt.CARD).write_text(json.dumps(card))
        preds = pd.read_csv(run / name / ckpt.PREDICTIONS, dtype={"id": str})
        test = preds["split"] == "test"
        preds.loc[test, "prob"] = probs(preds.loc[test, "label"].to_numpy(), rng)
        preds.to_csv(run / name / ckpt.PREDICTIONS, index=False)
    _edit_card(run / "resnet18", **BUDGET_CUT)
    return run


@pytest.fixture
def wide_run(wide_copy, monkeypatch) -> Path:
    monkeypatch.setenv("CHECKPOINTS_DIR", str(wide_copy.parent))
    return wide_copy


def page(name: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    at = at.switch_page(f"views/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def aucs_by_name(run: Path) -> dict[str, float]:
    """Display name -> test AUC, from each model's predictions.csv."""
    aucs = {}
    for model in ckpt.list_models(run):
        preds = pd.read_csv(run / model / ckpt.PREDICTIONS)
        test = preds[preds["split"] == "test"]
        aucs[ckpt.load_card(run / model)["display_name"]] = roc_auc_score(test["label"], test["prob"])
    return aucs


def figure_colours(at: AppTest) -> dict[str, set[str]]:
    """Trace name -> the colours it is drawn in, over every Plotly chart of the page."""
    seen: dict[str, set[str]] = {}
    for chart in at.get("plotly_chart"):
        for trace in json.loads(chart.proto.spec)["data"]:
            colour = (trace.get("marker") or {}).get("color") or (trace.get("line") or {}).get("color")
            if isinstance(colour, str) and trace.get("name"):
                seen.setdefault(trace["name"], set()).add(colour)
    return seen


def test_the_leaderboard_leads_with_auc_and_the_operating_point_best_first(wide_run):
    at = page("leaderboard")
    board = at.dataframe[0].value
    assert list(board.columns[:7]) == ["Model", "AUC", "AUC 95% CI", "Sensitivity", "Specificity", "Threshold",
                                       "Tied with the best"]
    aucs = aucs_by_name(wide_run)
    assert board["AUC"].tolist() == pytest.approx(sorted(aucs.values(), reverse=True))
    assert board["AUC"].tolist() == pytest.approx([aucs[m] for m in board["Model"]])
    caption = at.main.caption[0].value
    n = len(pd.read_csv(wide_run / "knn" / ckpt.PREDICTIONS).query("split == 'test'"))
    assert "internal test split" in caption and f"n = {n} slices" in caption
    assert "Cut short by the run budget:** ResNet-18 (column" in caption
    cut = board.set_index("Model")["Run budget cut"]
    assert cut["ResNet-18"] == "2 epochs on a 5 s share (its own: 30 s) of the 100 s run budget"
    assert (cut.drop("ResNet-18") == "").all()


def test_models_tied_with_the_best_are_marked_by_the_paired_delong_test(wide_run):
    marks = page("leaderboard").dataframe[0].value.set_index("Model")["Tied with the best"]
    assert marks["SVM (RBF)"] == "★ best"
    assert marks["Random forest"] == "✓ tied (p = 1.000)"
    assert marks["Gradient boosting"] == "lower (p < 0.001)"
    best = pd.read_csv(wide_run / "svm" / ckpt.PREDICTIONS, dtype={"id": str}).query("split == 'test'")
    for model in ("resnet18", "mobilenet_v2", "cnn_gru", "knn", "ensemble_soft"):
        rows = pd.read_csv(wide_run / model / ckpt.PREDICTIONS, dtype={"id": str}).query("split == 'test'")
        both = best.merge(rows, on="id", suffixes=("_best", ""))
        p = delong_test(both["label"], both["prob_best"], both["prob"])
        assert marks[ckpt.load_card(wide_run / model)["display_name"]].startswith("✓ tied" if p >= 0.05 else "lower")


def test_the_charts_show_the_top_five_by_auc_at_first_and_a_family_in_one_click(wide_run):
    at = page("leaderboard")
    shown = at.multiselect(key="lb_models").value
    aucs = aucs_by_name(wide_run)
    names = {m: ckpt.load_card(wide_run / m)["display_name"] for m in ckpt.list_models(wide_run)}
    assert len(shown) == 5 and min(aucs[names[m]] for m in shown) >= max(
        aucs[names[m]] for m in names if m not in shown)
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert sorted(t["name"] for t in bars) == sorted(names[m] for m in shown)
    at.radio(key="lb_models_pick").set_value("classical").run()
    assert sorted(at.multiselect(key="lb_models").value) == sorted(["knn", *COPIES])
    at.multiselect(key="lb_models").unselect("knn").run()
    assert at.radio(key="lb_models_pick").value == "hand"


def test_a_model_has_one_colour_on_every_figure_and_models_have_distinct_ones(wide_run):
    sixteen = [f"model {i}" for i in range(16)]
    assert len(set(figures.model_colours(sixteen).values())) == 16
    colours: dict[str, set[str]] = {}
    for name in ("leaderboard", "compare"):
        at = page(name)
        at.radio(key=f"{'lb' if name == 'leaderboard' else 'cmp'}_models_pick").set_value("all").run()
        for trace, seen in figure_colours(at).items():
            colours.setdefault(trace.split(" (ECE")[0], set()).update(seen)
    models = [ckpt.load_card(wide_run / m)["display_name"] for m in ckpt.list_models(wide_run)]
    assert all(len(colours[m]) == 1 for m in models), {m: colours[m] for m in models}
    assert len({next(iter(colours[m])) for m in models}) == len(models)


def test_compare_opens_at_the_sidebars_operating_point_and_follows_it(wide_run):
    at = page("compare")
    assert at.radio(key="cmp_mode").value == "youden"
    at.radio(key="cmp_models_pick").set_value("all").run()
    table = at.dataframe[0].value.set_index("Model")
    card = ckpt.load_card(wide_run / "resnet18")
    assert table.loc["ResNet-18", "Threshold"] == pytest.approx(card["thresholds"]["youden"])
    at.sidebar.selectbox(key="preset").set_value("sens95").run()
    assert at.radio(key="cmp_mode").value == "sens95"
    assert at.dataframe[0].value.set_index("Model").loc["ResNet-18", "Threshold"] == pytest.approx(
        card["thresholds"]["sens95"])
    at.slider(key="cmp_threshold").set_value(0.3).run()   # moving the slider: one threshold for every model
    assert at.radio(key="cmp_mode").value == "slider"
    assert (at.dataframe[0].value["Threshold"] == 0.3).all()


def test_the_training_caption_says_what_the_cards_say_of_augmentation(wide_copy, tmp_path, monkeypatch):
    run = Path(shutil.copytree(wide_copy, tmp_path / "checkpoints" / "plain"))
    networks = [m for m in ckpt.list_models(run) if "augment" in ckpt.load_card(run / m)["training"]]
    for model in networks:
        _edit_card(run / model, augment=False)
    monkeypatch.setenv("CHECKPOINTS_DIR", str(run.parent))
    captions = " ".join(c.value for c in page("training").main.caption)
    assert "un-augmented batches (every card: augmentation off)" in captions
    _edit_card(run / networks[0], augment=True)
    captions = " ".join(c.value for c in page("training").main.caption)
    assert f"augmented batches for {ckpt.load_card(run / networks[0])['display_name']} and un-augmented" in captions
