"""Errors (teaching): each model's false positives and negatives, and the cases models disagree on."""
import pandas as pd
import streamlit as st

from core.families import family_of_card
from core.report import PRESETS
from dashboard.frame import dataset_text, preset, require_dataset, require_run, threshold
from dashboard.loaders import (LOAD_ERRORS, case_image, cam_for, explain_api, model_for, outline, peak_note,
                               run_framing, run_windows, test_probs, truth as truth_of)

run = require_run()
st.title("Errors")
dataset, models = require_dataset(run)
st.caption(f"Run **{run.path.name}**, {dataset_text(dataset)}, each model at its **{PRESETS[preset()]}** threshold "
           "(sidebar). Pick a case below to see it with each model's CAM.")
cases = test_probs(*run.key, models, dataset)
truth = truth_of(cases)
# True where a model calls hemorrhage at its sidebar-preset threshold.
calls = pd.DataFrame({m: cases[m] >= threshold(run.cards[m]) for m in models}, index=cases.index)
columns = [c for c in ("subtype", "bleed_area_mm2") if c in cases]

model = st.selectbox("Model", models, format_func=run.display, key="err_model")
missed = cases[(cases["label"] == 1) & ~calls[model]]
false_alarms = cases[(cases["label"] == 0) & calls[model]]
for col, title, rows in zip(st.columns(2), ("False negatives (missed hemorrhage)",
                                            "False positives (normal called hemorrhage)"), (missed, false_alarms)):
    col.markdown(f"**{title}: {len(rows)}**")
    col.dataframe(rows[[model, *columns]].rename(columns={model: "probability"}).sort_values("probability"),
                  width="stretch")

split = calls.any(axis=1) & ~calls.all(axis=1)
st.markdown(f"**Cases the models disagree on: {int(split.sum())}** (of {len(cases)})")
disagree = cases.loc[split, ["label", *columns, *models]].assign(
    calls=calls[split].sum(axis=1).astype(str) + f" of {len(models)}")
st.dataframe(disagree.rename(columns={m: run.display(m) for m in models}), width="stretch")

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
tiles = [("Input" + (" (green: true bleed)" if mask is not None else ""), outline(image, mask))]
for m in [m for m in models if family_of_card(run.cards[m]).explained_by_cam]:
    try:
        model_for(run, m)   # loaded first (cached), so a model that fails to load is one warning, not the page
    except LOAD_ERRORS as err:
        st.warning(f"**{run.display(m)}**: unavailable: {err}")
        continue
    heat = cam_for(run, m, image, "gradcam")[0]
    tiles.append((f"{run.display(m)}: {cases.at[case, m]:.1%} → {'hemorrhage' if calls.at[case, m] else 'normal'}"
                  + peak_note(heat, mask), explain.overlay(image, heat, mask=mask)))
for start in range(0, len(tiles), 4):
    for col, (caption, tile) in zip(st.columns(4), tiles[start:start + 4]):
        col.image(tile, caption=caption, width="stretch")
st.caption("Grad-CAM of the hemorrhage output at 40% opacity, the true bleed outlined in green where the dataset "
           "knows it, with whether each map's peak fell on it; the Scan page offers the other methods.")
