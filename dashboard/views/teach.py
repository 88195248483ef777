"""Teach: a quiz over the cases the sidebar's dataset holds. A case shows as "Case k of n" and its image alone until
the learner answers (bleed or not, subtype, where) and reveals it: then its truth outline, each model's probability,
call and Grad-CAM, and the session summary of learner against models (core.teach)."""
import base64
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core.families import family_of_card
from core.metrics.labels import PRESETS
from core.subtypes import SUBTYPES
from core.teach import (LEARNER, NORMAL, OUTCOMES, Answer, Deck, build_deck, filter_deck, record, session_summary,
                        share_table)
from dashboard.frame import dataset_text, preset, require_dataset, require_run, threshold
from dashboard.loaders import scored, truth
from dashboard.models import (LOAD_ERRORS, case_image, cam_for, explain_api, model_for, outline, peak_note, run_framing,
                              run_windows)

GRID = 64          # click targets per side: a click anywhere selects the nearest, so the grid sets the precision
MARK = "#FFD400"   # the learner's point or box: yellow, apart from the truth's green and the maps' colours
CALLS = ("bleed", "no bleed")
# Buttons rather than a radio for the call: Streamlit ignores shortcuts while a form field has the focus.
SHORTCUTS = {"bleed": "1", "no bleed": "0", "reveal": "V", "next": "N", "previous": "P"}   # "R", "C": Streamlit's


def png_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def slice_figure(rgb: np.ndarray, pick: bool, where=None) -> go.Figure:
    """The slice at its own pixels (x right, y down); with `pick`, an invisible grid of click targets whose selected
    one shows as the learner's mark; `where`, a point (x, y) or box (x0, y0, x1, y1) drawn as the learner's mark."""
    h, w = rgb.shape[:2]
    fig = go.Figure(go.Image(source=png_uri(rgb), hoverinfo="skip"))
    if pick:
        step = max(1, max(h, w) // GRID)
        ys, xs = np.mgrid[0:h:step, 0:w:step]
        fig.add_scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", hoverinfo="none", showlegend=False,
                        marker=dict(size=6, opacity=0), selected=dict(marker=dict(opacity=1, size=14, color=MARK)),
                        unselected=dict(marker=dict(opacity=0)))
    if where is not None and len(where) == 2:
        fig.add_scatter(x=[where[0]], y=[where[1]], mode="markers", hoverinfo="skip", showlegend=False,
                        marker=dict(symbol="x", size=14, color=MARK))
    elif where is not None:
        fig.add_shape(type="rect", x0=where[0], y0=where[1], x1=where[2], y1=where[3], line=dict(color=MARK, width=2))
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], fixedrange=True, constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], fixedrange=True, constrain="domain", scaleanchor="x")
    return fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), height=480, hovermode="closest", hoverdistance=-1)


def span(container, bleeds: pd.DataFrame, column: str, label: str) -> tuple[float, float] | None:
    """A range slider over the bleeds' `column` where they record it; None while it spans them all."""
    if column not in bleeds or not bleeds[column].notna().any():
        return None
    top = float(np.ceil(bleeds[column].max() * 100) / 100)
    chosen = container.slider(label, 0.0, top, (0.0, top), key=f"teach_{column}_{top}")
    return None if chosen == (0.0, top) else chosen


def deck_of(run, dataset, models) -> Deck:
    """Every case of the dataset, then the teacher's filters and order (an expander that names nothing of a case)."""
    rows = scored(*run.key, dataset)
    full = build_deck(rows[rows["model"].isin(models)], {m: threshold(run.cards[m]) for m in models},
                      int(st.session_state.get("teach_seed", 0)))
    bleeds = full.cases[full.cases["label"] == 1]
    with st.expander(f"Deck: {len(full)} cases, {dataset_text(dataset)}"):
        c1, c2, c3 = st.columns(3)
        known = [s for s in SUBTYPES if full.cases[s].any()]
        chosen = c1.multiselect("Subtypes", [NORMAL, *known], key="teach_subtypes", placeholder="All cases")
        disagree = c1.checkbox("Only cases the models disagree on", key="teach_disagree")
        c1.number_input("Order (seed)", 0, 1_000_000, key="teach_seed")
        difficulty = span(c2, bleeds, "difficulty", "Difficulty of the bleeds")
        area = span(c2, bleeds, "bleed_area_mm2", "Bleed area (mm²)")
        model = c3.selectbox("Outcome of", models, format_func=run.display, key="teach_model")
        outcomes = c3.multiselect("Outcomes", list(OUTCOMES), key="teach_outcomes", placeholder="Any outcome")
    return filter_deck(full, chosen, difficulty, area, model, outcomes, disagree)


def step(by: int, n: int) -> None:
    st.session_state["teach_pos"] = (st.session_state["teach_pos"] + by) % n
    st.session_state["teach_round"] += 1   # a new visit: fresh answer widgets


def location_of(picked) -> dict:
    """The learner's mark on the chart: {"point": (x, y)} or {"box": (x0, y0, x1, y1)} (a box drawn wins), else {}."""
    selection = (picked or {}).get("selection", {})
    if box := selection.get("box"):
        return {"box": (box[-1]["x"][0], box[-1]["y"][0], box[-1]["x"][1], box[-1]["y"][1])}
    if points := selection.get("points"):
        return {"point": (points[-1]["x"], points[-1]["y"])}
    return {}


def keep(deck: Deck, case: str, number: int, answer: Answer | None, mask) -> None:
    if answer is not None:   # Reveal is disabled until there is one
        st.session_state["teach_log"][case] = record(deck, case, number, answer, mask)


def ask(deck: Deck, case: str, pos: int, image: np.ndarray, mask) -> None:
    """The quiz: the bare slice to click or box, bleed or not, the subtype, and Reveal."""
    key = st.session_state["teach_round"]
    left, right = st.columns([3, 2])
    with left:
        picked = st.plotly_chart(slice_figure(outline(image, None), pick=True), key=f"teach_pick_{key}",
                                 on_select="rerun", selection_mode=("points", "box"),
                                 config={"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "toImage"]})
    right.markdown("**Bleed or not?**")
    bleed = st.session_state.get(f"teach_call_{key}")
    for col, call in zip(right.columns(2), CALLS):
        col.button(call.capitalize(), shortcut=SHORTCUTS[call], key=f"teach_{call.replace(' ', '_')}_{key}",
                   icon=":material/check:" if bleed == call else None, on_click=st.session_state.update,
                   kwargs={f"teach_call_{key}": call}, width="stretch")
    subtype = right.selectbox("Subtype", SUBTYPES, index=None, key=f"teach_subtype_{key}",
                              placeholder="Name it (optional)", disabled=bleed != "bleed")
    location = location_of(picked)
    answer = None if bleed is None else Answer(bleed == "bleed", subtype if bleed == "bleed" else None, **location)
    right.caption("Where is it? " + {"box": "Your box is set.", "point": "Your point is set."}.get(
        next(iter(location), None), "Click it on the image, or pick box select in the chart's toolbar and drag a box."))
    right.button("Reveal", type="primary", shortcut=SHORTCUTS["reveal"], disabled=answer is None, key="teach_reveal",
                 on_click=keep, args=(deck, case, pos + 1, answer, mask), help="Answer bleed or not first.")


def maps(run, models, image: np.ndarray, mask, entry: dict | None) -> None:
    """Each CAM model's Grad-CAM with the truth outlined; whether its peak hit the bleed goes into the log entry."""
    explain, mapped = explain_api(), []
    for m in [m for m in models if family_of_card(run.cards[m]).explained_by_cam]:
        try:
            model_for(run, m)
            mapped.append(m)
        except LOAD_ERRORS as err:
            st.warning(f"**{run.display(m)}**: unavailable: {err}")
    if not mapped:
        st.caption("No model of this run draws Grad-CAM maps.")
    for start in range(0, len(mapped), 4):
        for col, m in zip(st.columns(4), mapped[start:start + 4]):
            heat = cam_for(run, m, image, "gradcam")[0]
            if entry is not None:
                entry[f"peak:{m}"] = explain.peak_on_bleed(heat, mask)
            col.image(explain.overlay(image, heat, mask=mask), caption=run.display(m) + peak_note(heat, mask),
                      width="stretch")
    if mapped:
        st.caption(f"{explain.colour_key_html()} Grad-CAM of the hemorrhage output, each map scaled to its own peak; "
                   "green: the true bleed.", unsafe_allow_html=True)


def verdict(entry: dict) -> str:
    marks = ["✓ right call" if entry["call"] == entry["label"] else "✗ wrong call"]
    if entry["subtype_right"] is not None:
        named = entry["answered_subtype"] or "none named"
        marks.append("✓ subtype" if entry["subtype_right"] else f"✗ subtype ({named})")
    if entry["located"] is not None:
        marks.append("✓ on the bleed" if entry["located"] else "✗ off the bleed")
    return f"**You**: {CALLS[1 - entry['call']]} · " + " · ".join(marks)


def readers(run, deck: Deck, case: str, entry: dict | None) -> pd.DataFrame:
    """The case's table: the learner's answer and each model's probability and call, right or wrong, located."""
    label, mark = bool(deck.cases.at[case, "label"]), {True: "✓", False: "✗", None: ""}
    # Text cells: the learner has no probability or threshold, and a blank reads better than "None".
    rows = [] if entry is None else [{"Reader": LEARNER, "P(hemorrhage)": "", "Threshold": "",
                                      "Call": CALLS[1 - entry["call"]], "Right": mark[bool(entry["call"]) == label],
                                      "Located": mark[entry["located"]]}]
    for m in deck.probs:
        called = bool(deck.calls.at[case, m])
        rows.append({"Reader": run.display(m), "P(hemorrhage)": f"{deck.probs.at[case, m]:.1%}",
                     "Threshold": f"{threshold(run.cards[m]):.1%}", "Call": CALLS[1 - called],
                     "Right": mark[called == label], "Located": mark[(entry or {}).get(f"peak:{m}")]})
    return pd.DataFrame(rows)


def show(run, deck: Deck, case: str, image: np.ndarray, mask) -> None:
    """The reveal: truth and its outline, the learner's marks, every model's probability, call and map."""
    entry = st.session_state["teach_log"].get(case)
    facts = deck.cases.loc[case]
    extra = "".join(f", {name} {facts[c]:{fmt}}" for c, name, fmt in
                    (("bleed_area_mm2", "bleed area (mm²)", ".0f"), ("difficulty", "difficulty", ".2f"))
                    if facts["label"] == 1 and c in facts and pd.notna(facts[c]))
    st.markdown(f"**Truth: {truth(deck.cases.loc[[case]]).iloc[0]}**{extra} · `{case}`")
    if entry is not None:
        st.markdown(verdict(entry))
    left, right = st.columns(2)
    left.plotly_chart(slice_figure(outline(image, mask), pick=False, where=entry and entry["where"]),
                      key="teach_shown", config={"displayModeBar": False})
    table = right.empty()
    maps(run, list(deck.probs), image, mask, entry)
    table.dataframe(readers(run, deck, case, entry), hide_index=True, width="stretch", height="content")


def summary(run, models) -> None:
    """Learner against each model on the answered cases, per subtype too, downloadable."""
    st.subheader("Session summary")
    log = st.session_state["teach_log"]
    if not log:
        st.caption("Answer a case and reveal it: from then on the learner and every model are counted here.")
        return
    entries = pd.DataFrame(list(log.values()))
    long = session_summary(entries, models)
    long["reader"] = long["reader"].map(lambda r: r if r == LEARNER else run.display(r))
    table = share_table(long)
    st.markdown(f"**{len(entries)} case{'s' if len(entries) > 1 else ''} answered.** Each cell: the share with its "
                "Wilson 95% interval; sensitivity per subtype counts the bleeds of that subtype; located: the "
                "learner's point or box on the bleed, each model's map peak on it.")
    st.dataframe(table.rename_axis(index="Reader", columns=None), width="stretch")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Answers (CSV)", entries.to_csv(index=False), "teach_answers.csv", "text/csv")
    c2.download_button("Summary (CSV)", long.to_csv(index=False), "teach_summary.csv", "text/csv")
    if c3.button("New session", help="Forget every answer of this session."):
        st.session_state["teach_log"] = {}
        st.rerun()


run = require_run()
st.title("Teach")
dataset, models = require_dataset(run)
st.caption(f"Run **{run.path.name}**; each model calls at its **{PRESETS[preset()]}** threshold (sidebar). Cases "
           "come in a shuffled order, named by their place alone until revealed.")
for name, value in (("teach_log", {}), ("teach_pos", 0), ("teach_round", 0)):
    st.session_state.setdefault(name, value)
deck = deck_of(run, dataset, models)
if not len(deck):
    st.info("No case passes these filters.")
    st.stop()
if st.session_state.get("teach_ids") != tuple(deck.cases.index):   # a new deck starts at its first case
    st.session_state.update(teach_ids=tuple(deck.cases.index), teach_pos=0)
    st.session_state["teach_round"] += 1
pos = st.session_state["teach_pos"]
case = deck.cases.index[pos]
quiz = st.toggle("Quiz: hide the answer until it is revealed", True, key="teach_quiz")
st.subheader(deck.title(pos))
prev_col, next_col, _ = st.columns([1, 1, 4])
prev_col.button("Previous", shortcut=SHORTCUTS["previous"], on_click=step, args=(-1, len(deck)), key="teach_prev")
next_col.button("Next case", shortcut=SHORTCUTS["next"], on_click=step, args=(1, len(deck)), key="teach_next")
image, mask, problem = case_image(deck.cases.at[case, "path"], run_framing(run), run_windows(run))
revealed = not quiz or case in st.session_state["teach_log"]
if image is None:
    st.error(problem if revealed else "This case's image cannot be read; go on to the next case.")
elif revealed:
    show(run, deck, case, image, mask)
else:
    ask(deck, case, pos, image, mask)
summary(run, models)
