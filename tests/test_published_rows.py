"""The source studies' published figures as Leaderboard reference rows: cited by kind and year as REFERENCE.md names
them (never as "Study A"), with blank cells where a study reported nothing (never "None")."""
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import train
from core.metrics.published import PUBLISHED, published_rows
from demo import REPO


@pytest.fixture(scope="module")
def knn_run(tiny_phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "checkpoints" / "knn"
    assert train.main(["--data", str(tiny_phantoms), "--models", "knn", "--image-size", "32", "--out", str(out)]) == 0
    return out


def shown(table: pd.DataFrame, placeholder: str | None) -> list[str]:
    """Every cell as st.dataframe draws it: a missing value as the placeholder, or "None" without one."""
    missing = "None" if placeholder is None else placeholder
    return [missing if pd.isna(v) else str(v) for v in table.to_numpy().ravel()]


def test_published_rows_cite_their_study_and_leave_unreported_cells_blank(knn_run, monkeypatch):
    monkeypatch.setenv("CHECKPOINTS_DIR", str(knn_run.parent))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=90).run()
    at = at.switch_page("views/leaderboard.py").run()
    at.toggle[0].set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    board = at.dataframe[0]
    published = board.value[board.value["Source"] != "this run"]
    assert len(published) == len(published_rows())
    for entry in PUBLISHED.values():   # e.g. "Inception (undergraduate thesis, 2024; published)"
        rows = published[published["Model"].str.contains(entry["cited_as"], regex=False)]
        assert len(rows) == len(entry["models"]) + len(entry.get("confusion", {}))
    cells = shown(board.value, board.proto.placeholder if board.proto.HasField("placeholder") else None)
    assert not [c for c in cells if c == "None" or "Study" in c or "study " in c]
    assert published["Recall (as printed)"].isna().any()   # a study that did not print it: a blank cell
