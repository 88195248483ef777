"""core.teach (the Teach page's deck, answer scoring and session summary) and per-subtype sensitivity
(core.metrics.binary.sensitivity_by_subtype), against hand counts and Wilson's formula written out."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from core.metrics.binary import sensitivity_by_subtype
from core.subtypes import SUBTYPES
from core.teach import (CLICK_TOLERANCE, LEARNER, MAX_BOX_SHARE, NORMAL, Answer, build_deck, filter_deck,
                        location_hit, record, session_summary, share_text, subtype_members)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval from its formula (Wilson 1927), independent of the scipy call core makes."""
    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# Eight cases: (id, label, subtype text, difficulty, area, P(model a), P(model b)).
CASES = [("hemorrhage/ph000001_s00", 1, "subdural", 0.1, 800.0, 0.9, 0.8),
         ("hemorrhage/ph000002_s00", 1, "subdural", 0.8, 90.0, 0.2, 0.7),
         ("hemorrhage/ph000003_s00", 1, "epidural", 0.3, 400.0, 0.7, 0.3),
         ("hemorrhage/ph000004_s00", 1, "subarachnoid+subdural", 0.5, 300.0, 0.6, 0.9),
         ("normal/ph000005_t00", 0, "", 0.2, 0.0, 0.1, 0.6),
         ("normal/ph000006_t00", 0, "", 0.4, 0.0, 0.3, 0.2),
         ("normal/ph000007_t00", 0, "", 0.6, 0.0, 0.8, 0.9),
         ("normal/ph000008_t00", 0, "", 0.9, 0.0, 0.1, 0.1)]
THRESHOLDS = {"a": 0.5, "b": 0.65}


def scored_rows(flags: bool = True) -> pd.DataFrame:
    """predictions.csv rows of two models, with sub_* flags (as a run's test split) or subtype text alone (as a
    stored evaluation)."""
    rows = []
    for model, column in (("a", 5), ("b", 6)):
        for case in CASES:
            row = {"model": model, "id": case[0], "path": f"/data/{case[0]}.png", "label": case[1],
                   "subtype": case[2], "difficulty": case[3], "bleed_area_mm2": case[4], "prob": case[column]}
            if flags:
                row.update({f"sub_{s}": float(s in case[2].split("+")) for s in SUBTYPES})
            rows.append(row)
    return pd.DataFrame(rows)


def test_sensitivity_by_subtype_matches_hand_counts_and_wilsons_formula():
    y = np.array([1, 1, 1, 1, 0, 1])
    called = np.array([1, 0, 1, 1, 1, 0])
    members = {"subdural": [True, True, False, True, False, False], "epidural": [False, False, True, True, False, True],
               "subarachnoid": [False] * 5 + [False], "intraventricular": [False, False, False, False, True, False]}
    found = sensitivity_by_subtype(y, called, members)
    # subdural: bleeds 0, 1, 3, called 0 and 3; epidural: bleeds 2, 3, 5, called 2 and 3; the others have no bleed
    # (case 4 is intraventricular-flagged but normal).
    assert set(found) == {"subdural", "epidural"}
    for name in found:
        assert (found[name]["tp"], found[name]["n"]) == (2, 3)
        assert found[name]["sensitivity"] == pytest.approx(2 / 3)
        assert found[name]["sensitivity_ci"] == pytest.approx(wilson(2, 3), abs=1e-9)
    with pytest.raises(ValueError, match="3 memberships for 6 cases"):
        sensitivity_by_subtype(y, called, {"subdural": [True, False, True]})


def test_subtype_members_read_flags_or_the_subtype_text_alike():
    by_flags = subtype_members(scored_rows(flags=True).drop_duplicates("id"))
    by_text = subtype_members(scored_rows(flags=False).drop_duplicates("id"))
    pd.testing.assert_frame_equal(by_flags, by_text)
    assert list(by_flags.columns) == list(SUBTYPES)
    assert by_flags["subdural"].tolist() == [True, True, False, True, False, False, False, False]
    assert by_flags["subarachnoid"].sum() == 1


def test_the_deck_shows_a_case_by_its_place_alone_in_a_seeded_order():
    rows = scored_rows()
    deck = build_deck(rows, THRESHOLDS, seed=3)
    assert sorted(deck.cases.index) == sorted(c[0] for c in CASES)
    titles = [deck.title(i) for i in range(len(deck))]
    assert titles[6] == "Case 7 of 8"
    words = {*SUBTYPES, "hemorrhage", "normal", *(c[0] for c in CASES), *(c[0].split("/")[1] for c in CASES)}
    assert not [t for t in titles for w in words if w in t.lower()]
    # The order is the seed's and the cases', never the rows' own order.
    again = build_deck(rows.sample(frac=1, random_state=1), THRESHOLDS, seed=3)
    assert list(again.cases.index) == list(deck.cases.index)
    assert list(build_deck(rows, THRESHOLDS, seed=4).cases.index) != list(deck.cases.index)
    assert deck.calls.loc["hemorrhage/ph000002_s00"].tolist() == [False, True]   # a at 0.5, b at 0.65
    with pytest.raises(ValueError, match="outside this deck of 8"):
        deck.title(8)
    with pytest.raises(ValueError, match="no threshold for model"):
        build_deck(rows, {"a": 0.5})
    with pytest.raises(ValueError, match="lack the column"):
        build_deck(rows.drop(columns="path"), THRESHOLDS)


def test_deck_filters():
    deck = build_deck(scored_rows(), THRESHOLDS)
    ids = lambda d: sorted(d.cases.index)   # noqa: E731
    assert ids(filter_deck(deck, ["subdural"])) == ["hemorrhage/ph000001_s00", "hemorrhage/ph000002_s00",
                                                    "hemorrhage/ph000004_s00"]
    assert len(filter_deck(deck, [NORMAL, "epidural"])) == 5
    # Ranges bound the bleeds; normals, with no bleed to measure, pass.
    assert ids(filter_deck(deck, difficulty=(0.0, 0.4))) == ["hemorrhage/ph000001_s00", "hemorrhage/ph000003_s00",
                                                             *(c[0] for c in CASES[4:])]
    assert len(filter_deck(deck, [NORMAL], area=(100, 1000))) == 4
    assert ids(filter_deck(deck, model="a", outcomes=["missed"])) == ["hemorrhage/ph000002_s00"]
    assert ids(filter_deck(deck, model="b", outcomes=["false alarm", "missed"])) == [
        "hemorrhage/ph000003_s00", "normal/ph000007_t00"]
    assert ids(filter_deck(deck, disagree=True)) == ["hemorrhage/ph000002_s00", "hemorrhage/ph000003_s00"]
    with pytest.raises(ValueError, match="unknown subtype"):
        filter_deck(deck, ["subduralish"])
    with pytest.raises(ValueError, match="unknown outcome"):
        filter_deck(deck, model="a", outcomes=["lucky"])
    with pytest.raises(ValueError, match="no calls of model"):
        filter_deck(deck, model="c", outcomes=["caught"])


def test_a_click_is_on_the_bleed_inside_its_mask_or_within_the_tolerance():
    mask = np.zeros((256, 256), bool)
    mask[100:120, 60:80] = True                        # rows (y) 100-119, columns (x) 60-79
    slack = CLICK_TOLERANCE * 256
    assert location_hit(Answer(True, point=(70, 110)), mask) is True
    assert location_hit(Answer(True, point=(79 + slack, 110)), mask) is True
    assert location_hit(Answer(True, point=(79 + slack + 1, 110)), mask) is False
    assert location_hit(Answer(True, point=(200, 30)), mask) is False
    assert location_hit(Answer(True, box=(75, 95, 90, 105)), mask) is True       # overlaps a corner
    assert location_hit(Answer(True, box=(150, 150, 200, 200)), mask) is False
    huge = math.ceil(math.sqrt(MAX_BOX_SHARE) * 256) + 1
    assert location_hit(Answer(True, box=(0, 0, huge, huge)), mask) is False      # covers the bleed, says nothing
    assert location_hit(Answer(True), mask) is None
    assert location_hit(Answer(True, point=(70, 110)), None) is None
    with pytest.raises(ValueError, match="outside the 256 x 256 slice"):
        location_hit(Answer(True, point=(300, 10)), mask)
    with pytest.raises(ValueError, match="unknown subtype"):
        Answer(True, "bleedy")
    with pytest.raises(ValueError, match="not both"):
        Answer(True, point=(1, 1), box=(0, 0, 2, 2))


def test_the_click_tolerance_is_the_pointing_games():
    from core.explain.cam import DEFAULT_TOLERANCE_PX, TOLERANCE_SIDE
    assert CLICK_TOLERANCE == DEFAULT_TOLERANCE_PX / TOLERANCE_SIDE


def test_the_session_summary_counts_learner_and_models_per_subtype():
    deck = build_deck(scored_rows(), THRESHOLDS)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    answers = {"hemorrhage/ph000001_s00": Answer(True, "subdural", point=(15, 15)),         # caught, located
               "hemorrhage/ph000002_s00": Answer(False),                                    # missed
               "hemorrhage/ph000003_s00": Answer(True, "subdural", point=(50, 50)),         # caught, off, wrong type
               "hemorrhage/ph000004_s00": Answer(True),                                     # caught, no location
               "normal/ph000005_t00": Answer(True, point=(15, 15)),                         # false alarm
               "normal/ph000006_t00": Answer(False)}
    log = pd.DataFrame([record(deck, case, i + 1, answer, mask) for i, (case, answer) in enumerate(answers.items())])
    assert log.loc[0, "where"] == (15, 15) and log.loc[0, "subtype_right"] and log.loc[0, "located"]
    assert log.loc[1, "located"] is None and log.loc[3, "located"] is False and log.loc[2, "subtype_right"] is False
    assert log.loc[4, "located"] is None and log.loc[4, "subtype_right"] is None
    log["peak:a"] = [True, None, False, True, None, None]
    table = session_summary(log, ["a", "b"]).set_index(["reader", "measure"])
    expect = {(LEARNER, "sensitivity"): (3, 4), (LEARNER, "specificity"): (1, 2),
              (LEARNER, "sensitivity: subdural"): (2, 3), (LEARNER, "sensitivity: epidural"): (1, 1),
              (LEARNER, "sensitivity: subarachnoid"): (1, 1), (LEARNER, "subtype named"): (1, 3),
              (LEARNER, "located"): (1, 3),
              # a calls bleeds 1, 3, 4, b bleeds 1, 2, 4; neither calls normal 5 or 6.
              ("a", "sensitivity"): (3, 4), ("a", "specificity"): (2, 2), ("a", "sensitivity: subdural"): (2, 3),
              ("a", "sensitivity: epidural"): (1, 1), ("a", "located"): (2, 3),
              ("b", "sensitivity"): (3, 4), ("b", "specificity"): (2, 2), ("b", "sensitivity: subdural"): (3, 3),
              ("b", "sensitivity: epidural"): (0, 1)}
    for key, (k, n) in expect.items():
        row = table.loc[key]
        assert (row["k"], row["n"]) == (k, n), key
        assert row["value"] == pytest.approx(k / n)
        assert (row["low"], row["high"]) == pytest.approx(wilson(k, n), abs=1e-9)
    assert ("b", "located") not in table.index     # no map drawn for b
    assert share_text(0.75, 0.409, 0.929, 6, 8) == "75% (41–93%), 6 of 8"
    assert session_summary(log.iloc[:0], ["a"]).empty


def test_core_teach_imports_no_torch():
    """The Teach page's logic loads without the networks' stack."""
    import subprocess
    import sys
    code = "import sys, core.teach; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0
