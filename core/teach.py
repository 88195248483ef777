"""Teaching sessions over stored cases: a deck that shows a case by its place alone until the learner reveals it,
the learner's answer scored against the truth, and a session summary setting the learner beside each model."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.subtypes import FLAG_COLUMNS, SUBTYPES
from core.metrics.binary import sensitivity_by_subtype
from core.metrics.stats import check_labels, wilson_interval

LEARNER = "Learner"
NORMAL = "normal"   # the subtype filter's name for the normal cases
# A click or box within this share of the slice's long side of the bleed is on it: the pointing game's slack for the
# models' maps (core.explain.cam.DEFAULT_TOLERANCE_PX on TOLERANCE_SIDE), so learner and maps meet one rule.
CLICK_TOLERANCE = 8 / 256
MAX_BOX_SHARE = 0.25   # a box over more of the slice than this says "somewhere here", not where: never a hit
OUTCOMES = {"caught": (1, True), "missed": (1, False), "false alarm": (0, True), "cleared": (0, False)}
FACTS = ("label", "path", "subtype", "difficulty", "bleed_area_mm2")
REQUIRED = ("model", "id", "prob", "label", "path")
SUMMARY_COLUMNS = ["reader", "measure", "value", "low", "high", "k", "n"]


@dataclass(frozen=True)
class Deck:
    """Cases in a seeded order, indexed by their id (which no page shows before a reveal): `cases` holds the truth
    and facts (label, path, subtype text, difficulty and bleed area where known, one boolean column per subtype),
    `probs` each model's probability and `calls` its call at its threshold."""
    cases: pd.DataFrame
    probs: pd.DataFrame
    calls: pd.DataFrame

    def __len__(self) -> int:
        return len(self.cases)

    def title(self, position: int) -> str:
        """What a case is called on screen: its place in the deck, nothing of its own."""
        if not 0 <= position < len(self):
            raise ValueError(f"case {position + 1} is outside this deck of {len(self)}")
        return f"Case {position + 1} of {len(self)}"

    def subset(self, keep: pd.Series) -> Deck:
        return Deck(self.cases[keep], self.probs[keep], self.calls[keep])

    def subtypes(self, case: str) -> list[str]:
        return [s for s in SUBTYPES if self.cases.at[case, s]]


def subtype_members(cases: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per subtype (SUBTYPES): the case's sub_* flag is 1, or, where the cases carry no flags, the
    subtype is named in its `subtype` text ("a+b" for several); False where unknown."""
    named = (cases["subtype"].fillna("").astype(str).str.split("+") if "subtype" in cases
             else pd.Series([[]] * len(cases), index=cases.index))
    return pd.DataFrame({s: cases[c].eq(1) if c in cases else named.map(lambda names, s=s: s in names)
                         for s, c in zip(SUBTYPES, FLAG_COLUMNS)}, index=cases.index, dtype=bool)


def build_deck(rows: pd.DataFrame, thresholds: dict[str, float], seed: int = 0) -> Deck:
    """The deck of scored rows, one per model and case (model, id, prob, label, path and any facts, as
    predictions.csv holds them), in an order set by the seed and the case ids alone; each model is called at
    thresholds[model]."""
    if missing := [c for c in REQUIRED if c not in rows]:
        raise ValueError(f"the scored rows lack the column(s) {', '.join(missing)}")
    if rows.empty:
        raise ValueError("no scored cases to build a deck from")
    if unknown := sorted(set(rows["model"]) - set(thresholds)):
        raise ValueError(f"no threshold for model(s) {', '.join(unknown)}")
    first = rows.drop_duplicates("id").set_index("id").sort_index()
    first = first.iloc[np.random.default_rng(seed).permutation(len(first))]
    cases = first[[c for c in FACTS if c in first]].join(subtype_members(first))
    if "subtype" in cases:
        cases["subtype"] = cases["subtype"].fillna("").astype(str)
    models = [m for m in thresholds if m in set(rows["model"])]
    probs = rows.pivot_table(index="id", columns="model", values="prob", aggfunc="first").reindex(
        index=cases.index, columns=models)
    calls = probs.ge(pd.Series({m: thresholds[m] for m in models}), axis="columns")
    return Deck(cases, probs, calls)


def filter_deck(deck: Deck, subtypes=(), difficulty: tuple[float, float] | None = None,
                area: tuple[float, float] | None = None, model: str | None = None, outcomes=(),
                disagree: bool = False) -> Deck:
    """The cases that pass every filter given: of any of `subtypes` (SUBTYPES, or NORMAL for the normals); a bleed's
    difficulty and area (mm²) within (low, high), normals having neither; `model`'s outcome among `outcomes`
    (OUTCOMES); the models' calls split."""
    cases, keep = deck.cases, pd.Series(True, index=deck.cases.index)
    if unknown := sorted(set(subtypes) - {NORMAL, *SUBTYPES}):
        raise ValueError(f"unknown subtype(s) {', '.join(unknown)}; choose from {NORMAL}, {', '.join(SUBTYPES)}")
    if subtypes:
        named = [s for s in subtypes if s != NORMAL]
        keep &= cases[named].any(axis=1) | ((cases["label"] == 0) & (NORMAL in subtypes))
    for column, span in (("difficulty", difficulty), ("bleed_area_mm2", area)):
        if span is not None:
            if column not in cases:
                raise ValueError(f"these cases record no {column}")
            keep &= (cases["label"] == 0) | cases[column].between(*span)
    if outcomes:
        if model not in deck.calls:
            raise ValueError(f"no calls of model {model!r} in this deck")
        if unknown := sorted(set(outcomes) - set(OUTCOMES)):
            raise ValueError(f"unknown outcome(s) {', '.join(unknown)}; choose from {', '.join(OUTCOMES)}")
        keep &= pd.concat([(cases["label"] == label) & (deck.calls[model] == call)
                           for label, call in map(OUTCOMES.get, outcomes)], axis=1).any(axis=1)
    if disagree:
        keep &= deck.calls.any(axis=1) & ~deck.calls.all(axis=1)
    return deck.subset(keep)


@dataclass(frozen=True)
class Answer:
    """A learner's answer: bleed or not, the subtype named (None: none), and where: a point (x, y) or a box
    (x0, y0, x1, y1) in the slice's pixels, or neither."""
    bleed: bool
    subtype: str | None = None
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self):
        if self.subtype is not None and self.subtype not in SUBTYPES:
            raise ValueError(f"unknown subtype {self.subtype!r}; choose from {', '.join(SUBTYPES)}")
        if self.point is not None and self.box is not None:
            raise ValueError("an answer gives a point or a box, not both")


def _check_inside(xs, ys, shape: tuple[int, int]) -> None:
    h, w = shape
    if not all(-0.5 <= x <= w - 0.5 for x in xs) or not all(-0.5 <= y <= h - 0.5 for y in ys):
        raise ValueError(f"the answer {tuple(xs)}, {tuple(ys)} lies outside the {w} x {h} slice")


def location_hit(answer: Answer, mask: np.ndarray | None) -> bool | None:
    """Whether the answer's point lies within CLICK_TOLERANCE of the slice's long side of the true bleed, or its
    box (over at most MAX_BOX_SHARE of the slice) reaches that close; None without a bleed mask or a location."""
    if mask is None or not np.any(mask) or (answer.point is None and answer.box is None):
        return None
    mask = np.asarray(mask, dtype=bool)
    tolerance = CLICK_TOLERANCE * max(mask.shape)
    if answer.point is not None:
        x, y = answer.point
        _check_inside([x], [y], mask.shape)
        ys, xs = np.nonzero(mask)
        return bool(np.hypot(xs - x, ys - y).min() <= tolerance)
    x0, x1 = sorted(answer.box[0::2])
    y0, y1 = sorted(answer.box[1::2])
    _check_inside([x0, x1], [y0, y1], mask.shape)
    if (x1 - x0 + 1) * (y1 - y0 + 1) > MAX_BOX_SHARE * mask.size:
        return False
    rows = slice(max(0, math.ceil(y0 - tolerance)), math.floor(y1 + tolerance) + 1)
    cols = slice(max(0, math.ceil(x0 - tolerance)), math.floor(x1 + tolerance) + 1)
    return bool(mask[rows, cols].any())


def record(deck: Deck, case: str, number: int, answer: Answer, mask: np.ndarray | None) -> dict:
    """One line of the session log: the case (its number in the deck then, and its id, for after the session), the
    truth, the learner's answer (`where`: the point or box given, else None) and marks (`subtype_right` and
    `located` only for a bleed called a bleed, and only where the truth knows the subtype or has a mask) and each
    model's call (`call:MODEL`)."""
    label, truth = int(deck.cases.at[case, "label"]), deck.subtypes(case)
    caught = bool(label and answer.bleed)
    # A bleed called but not shown where is not located; location_hit's None means no location was given.
    located = bool(location_hit(answer, mask)) if caught and mask is not None and np.any(mask) else None
    return {"case": number, "id": case, "label": label, "subtype": "+".join(truth),
            **{s: s in truth for s in SUBTYPES},
            "call": int(answer.bleed), "answered_subtype": answer.subtype or "", "where": answer.point or answer.box,
            "subtype_right": (answer.subtype in truth) if caught and truth else None,
            "located": located,
            **{f"call:{m}": int(deck.calls.at[case, m]) for m in deck.calls}}


def share_row(reader: str, measure: str, k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"reader": reader, "measure": measure, "value": k / n, "low": lo, "high": hi, "k": k, "n": n}


def share_text(value: float, low: float, high: float, k: int, n: int) -> str:
    """'75% (41–93%), 6 of 8': a share with its 95% interval and counts."""
    return f"{value:.0%} ({100 * low:.0f}–{high:.0%}), {k} of {n}"


def share_table(long: pd.DataFrame) -> pd.DataFrame:
    """Readers x measures of summary rows (SUMMARY_COLUMNS), each cell a share_text, "—" where a reader has no
    case to count; readers and measures in the order they first come."""
    text = [share_text(*r) for r in long[["value", "low", "high", "k", "n"]].itertuples(index=False)]
    return long.assign(text=text).pivot(index="reader", columns="measure", values="text").reindex(
        index=list(dict.fromkeys(long["reader"])), columns=list(dict.fromkeys(long["measure"]))).fillna("—")


def subtype_rows(reader: str, labels, calls, members: pd.DataFrame) -> list[dict]:
    """Summary rows 'sensitivity: SUBTYPE' of one reader (core.metrics.binary.sensitivity_by_subtype)."""
    found = sensitivity_by_subtype(labels, calls, {s: members[s].to_numpy() for s in members})
    return [share_row(reader, f"sensitivity: {s}", r["tp"], r["n"]) for s, r in found.items()]


def _reader_rows(reader: str, labels: np.ndarray, calls: np.ndarray, members: pd.DataFrame,
                 marks: dict[str, pd.Series]) -> list[dict]:
    """Sensitivity, specificity, per subtype and each of `marks` (booleans, NaN where not counted) of one reader."""
    out = [share_row(reader, name, int((calls[labels == c] == c).sum()), int((labels == c).sum()))
           for name, c in (("sensitivity", 1), ("specificity", 0)) if (labels == c).any()]
    out += subtype_rows(reader, labels, calls, members)
    for measure, hits in marks.items():
        counted = hits.dropna().astype(bool)
        if len(counted):
            out.append(share_row(reader, measure, int(counted.sum()), len(counted)))
    return out


def session_summary(log: pd.DataFrame, models) -> pd.DataFrame:
    """Learner and each model on the answered cases (the rows of `record`, with `peak:MODEL` where a map was drawn):
    sensitivity, specificity and sensitivity per subtype, with Wilson 95% intervals; the learner's subtypes named
    right and bleeds located, each model's map peaks on the bleed. Long rows: SUMMARY_COLUMNS."""
    if log.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    labels, members = check_labels(log["label"]), log[list(SUBTYPES)].astype(bool)
    rows = _reader_rows(LEARNER, labels, log["call"].to_numpy(int), members,
                        {"subtype named": log["subtype_right"], "located": log["located"]})
    for m in models:
        peaks = log[f"peak:{m}"] if f"peak:{m}" in log else pd.Series(dtype=object)
        rows += _reader_rows(m, labels, log[f"call:{m}"].to_numpy(int), members, {"located": peaks})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
