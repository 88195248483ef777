"""What the pages say agrees with the data: one operating point per page, thresholds at the probability's precision,
human column names, no "None" in a table, CAM captions that tell a cached map, a calm leakage note when no group
straddles splits. Streamlit AppTest on the suite's tiny run, as tests/test_dashboard.py."""
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import TINY_RUN_CAM_MODELS
from core.io import store as ckpt
from core.metrics.binary import binary_metrics
from core.report import PRESETS, card_markdown
from test_dashboard import ok, page, run_dir, texts   # noqa: F401 (run_dir is a fixture)

# "ResNet-18: 41.6% → hemorrhage (t = 39.5%)": probability and threshold at the same precision.
CALL = re.compile(r": \d+\.\d% → (hemorrhage|normal) \(t = \d+\.\d%\)")


def cells(at) -> list:
    """Every cell of every table on the page."""
    return [v for frame in at.dataframe for v in frame.value.astype(object).to_numpy().ravel()]


def test_model_card_shows_every_figure_at_the_sidebars_operating_point(run_dir):
    at = ok(page("model_cards"))
    rows = pd.read_csv(run_dir / "resnet18" / ckpt.PREDICTIONS, dtype={"id": str})
    for point in ("youden", "sens95"):
        at.sidebar.selectbox(key="preset").set_value(point).run()
        t = ckpt.load_card(run_dir / "resnet18")["thresholds"][point]
        text = texts(ok(at))
        assert "threshold 0.5" not in text and text.count(f"{PRESETS[point]}: t = {t:.3f}") == 2
        table = at.dataframe[0].value
        for split, column in (("val", "validation"), ("test", "test")):
            part = rows[rows["split"] == split]
            expected = binary_metrics(part["label"], part["prob"], t)["sensitivity"]
            assert table.loc["Sensitivity", column].startswith(f"{expected:.3f}")


def test_model_card_says_why_sens95_can_sit_above_youden(run_dir):
    text = texts(ok(page("model_cards")))
    assert "highest threshold that keeps validation sensitivity at or above 95%" in text
    assert "higher than Youden's" in text


def test_model_card_tables_say_dash_where_a_figure_does_not_apply(run_dir):
    at = ok(page("model_cards"))
    shown = cells(at)
    assert "—" in shown, "accuracy has no precision or recall in the per-class report"
    assert not any(v is None or (isinstance(v, float) and v != v) for v in shown)


def test_errors_tables_name_their_columns_for_people_and_captions_show_thresholds(run_dir):
    at = ok(page("errors"))
    for frame in at.dataframe:
        columns = set(frame.value.columns)
        assert {"Truth", "Bleed area (mm²)"} <= columns and not {"label", "bleed_area_mm2", "subtype"} & columns
        assert frame.value["Truth"].str.match(r"^(hemorrhage|normal)").all()
    at.toggle(key="err_show").set_value(True).run()
    maps = [c for image in ok(at).image[1:] for c in image.captions]
    assert len(maps) == len(TINY_RUN_CAM_MODELS) and all(CALL.search(c) for c in maps)
    assert any("Colour key" in c.value and "linear-gradient" in c.value for c in at.caption)


def test_scan_cam_captions_show_thresholds_say_cached_and_carry_a_colour_key(run_dir):
    at = ok(page("scan"))
    at.radio(key="scan_source").set_value("phantom").run()
    at.slider(key="cam_alpha").set_value(0.8).run()   # a rerun: every map now comes from the cache
    maps = [c for image in ok(at).image[1:] for c in image.captions]
    assert len(maps) == len(TINY_RUN_CAM_MODELS)
    assert all(CALL.search(c) and ", gradcam, cached" in c for c in maps)
    assert any("Colour key" in c.value and "linear-gradient" in c.value for c in at.caption)


def test_data_page_calls_cross_split_pairs_expected_when_no_group_straddles(run_dir, tmp_path, monkeypatch):
    leak = json.loads((run_dir / "leakage.json").read_text())
    assert leak["near_duplicate_pairs_across_splits"] > 0 and not leak["groups_straddling_splits"]
    at = ok(page("data"))
    note = " ".join(i.value for i in at.info)
    assert "No group straddles splits" in note and "are expected" in note
    assert not any("more than one split" in w.value for w in at.warning)

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "leakage.json").write_text(json.dumps({**leak, "groups_straddling_splits": ["normal/ph000001_s00"]}))
    monkeypatch.setenv("CHECKPOINTS_DIR", str(tmp_path))
    at = ok(page("data"))
    assert any("Groups in more than one split: 1" in w.value for w in at.warning)
    assert "No group straddles" not in " ".join(i.value for i in at.info)


def test_a_card_says_how_its_model_was_trained_in_words(run_dir):
    """No "pretrained False" or "1 epochs": a network's epochs and starting weights, a fit for the others."""
    lines = {m: next(line for line in card_markdown(ckpt.load_card(run_dir / m)).splitlines()
                     if line.startswith("- Training:")) for m in ("resnet18", "knn")}
    assert re.match(r"- Training: 2 epochs in \d+ s on cpu, seed 0; started from scratch$", lines["resnet18"])
    assert re.match(r"- Training: fitted once in \d+ s on cpu, seed 0$", lines["knn"])
