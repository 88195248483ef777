"""Errors (teaching): each model's false positives and negatives, and the cases models disagree on."""
import pandas as pd
import streamlit as st

from core.families import family_of_card
from core.metrics.labels import PRESETS
from dashboard.frame import dataset_text, preset, require_dataset, require_run, threshold
from dashboard.loaders import test_probs, truth as truth_of
from dashboard.models import (LOAD_ERRORS, case_image, cam_for, explain_api, model_for, outline, peak_note, run_framing,
                              run_windows)

PERCENT = st.column_config.NumberColumn(format="percent")


def case_facts(cases: pd.DataFrame) -> pd.DataFrame:
    """What a reader needs of each case: the truth in words (with its subtype) and a bleed's area where the dataset
    measures it, "—" for a normal or an unmeasured bleed."""
    facts = pd.DataFrame({"Truth": truth_of(cases)}, index=cases.index)
    if "bleed_area_mm2" in cases:
        area = cases["bleed_area_mm2"].where(cases["label"] == 1)
        facts["Bleed area (mm²)"] = area.map(lambda a: "—" if pd.isna(a) else f"{a:.0f}")
    return facts


run = require_run()
st.title("Errors")
dataset, models = require_dataset(run)
st.caption(f"Run **{run.path.name}**, {dataset_text(dataset)}, each model at its **{PRESETS[preset()]}** threshold "
           "(sidebar). Pick a case below to see it with each model's CAM.")
cases = test_probs(*run.key, models, dataset)
facts = case_facts(cases)
truth = facts["Truth"]
# True where a model calls hemorrhage at its sidebar-preset threshold.
calls = pd.DataFrame({m: cases[m] >= threshold(run.cards[m]) for m in models}, index=cases.index)

model = st.selectbox("Model", models, format_func=run.display, key="err_model")
missed = cases[(cases["label"] == 1) & ~calls[model]]
false_alarms = cases[(cases["label"] == 0) & calls[model]]
for col, title, rows in zip(st.columns(2), ("False negatives (missed hemorrhage)",
                                            "False positives (normal called hemorrhage)"), (missed, false_alarms)):
    col.markdown(f"**{title}: {len(rows)}** (threshold {threshold(run.cards[model]):.1%})")
    col.dataframe(facts.loc[rows.index].assign(Probability=rows[model]).sort_values("Probability"),
                  width="stretch", column_config={"Probability": PERCENT})

split = calls.any(axis=1) & ~calls.all(axis=1)
st.markdown(f"**Cases the models disagree on: {int(split.sum())}** (of {len(cases)})")
disagree = facts.loc[split].join(cases.loc[split, list(models)].rename(columns=run.display)).assign(
    Calls=calls[split].sum(axis=1).astype(str) + f" of {len(models)} call hemorrhage")
st.dataframe(disagree, width="stretch", column_config={run.display(m): PERCENT for m in models})

st.subheader("Look closer")
pool = list(dict.fromkeys([*missed.index, *false_alarms.index, *disagree.index]))
if not pool:
    st.success("No errors and no disagreement at this operating point.")
    st.stop()
case = st.selectbox("Case", pool, format_func=lambda i: f"{i} ({truth[i]})", key="err_case")
if not st.toggle("Show the image and each model's Grad-CAM", key="err_show"):
    st.stop()
image, mask, problem = case_image(cases.at[case, "path"], run_framing(run), run_windows(run))
if image is None:
    st.error(problem)
    st.stop()
explain = explain_api()
mapped = []
for m in [m for m in models if family_of_card(run.cards[m]).explained_by_cam]:
    try:
        model_for(run, m)   # loaded first (cached), so a model that fails to load is one warning, not the page
        mapped.append(m)
    except LOAD_ERRORS as err:
        st.warning(f"**{run.display(m)}**: unavailable: {err}")
# Every tile becomes a placeholder before any map is computed: a new case never shows the last case's maps.
tiles = [col.empty() for _ in range(0, len(mapped) + 1, 4) for col in st.columns(4)][:len(mapped) + 1]
tiles[0].image(outline(image, mask), caption="Input" + (" (green: true bleed)" if mask is not None else ""),
               width="stretch")
for tile in tiles[1:]:
    tile.caption("Computing Grad-CAM…")
for tile, m in zip(tiles[1:], mapped):
    heat = cam_for(run, m, image, "gradcam")[0]
    call = "hemorrhage" if calls.at[case, m] else "normal"
    tile.image(explain.overlay(image, heat, mask=mask), width="stretch",
               caption=f"{run.display(m)}: {cases.at[case, m]:.1%} → {call} (t = {threshold(run.cards[m]):.1%})"
                       + peak_note(heat, mask))
st.caption(f"{explain.colour_key_html()} Each map is scaled to its own peak. Grad-CAM of the hemorrhage output at "
           "40% opacity, the true bleed outlined in green where the dataset knows it, with whether each map's peak "
           "fell on it; the Scan page offers the other methods.", unsafe_allow_html=True)
