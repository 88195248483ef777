"""Leaderboard: one row per model, test-split metrics with 95% intervals at the sidebar's operating point."""
import pandas as pd
import streamlit as st

from dashboard import common, figures

run = common.require_run()
st.title("Leaderboard")
st.caption(f"Run **{run.path.name}**, test split, operating point **{common.PRESETS[common.preset()]}** "
           "(change it in the sidebar). Intervals: Wilson for proportions, DeLong for AUC, bootstrap for F1. "
           "Click a column header to sort.")

board, mets = common.leaderboard(run)
show_published = st.toggle("Add the source studies' published figures as reference rows", value=False)
table = pd.concat([board, common.published_board()], ignore_index=True) if show_published else board
number = st.column_config.NumberColumn
st.dataframe(table, hide_index=True, width="stretch", column_config={
    **{label: number(format="%.3f") for label in [*common.METRICS.values(), "Recall (as printed)"]},
    "Threshold": number(format="%.3f"), "Latency p50 (ms)": number(format="%.1f"),
    "Params (M)": number(format="%.2f"), "Size (MB)": number(format="%.1f"), "Training (s)": number(format="%.0f")})
if show_published:
    st.caption("Rows marked **published** are the studies' own figures on their own data and hardware, not "
               "computed here; *recomputed* rows score study B's printed confusion matrices with the same code as "
               "this run, and disagree with its summary table (see Model cards → Check a published table).")

names = {m: run.display(m) for m in run.models}
left, right = st.columns(2)
left.plotly_chart(figures.metric_bars(mets, names, common.METRICS), width="stretch")
right.plotly_chart(figures.radar(mets, names, common.METRICS), width="stretch")
st.plotly_chart(figures.accuracy_vs_latency(board), width="stretch")
latency_device = {c["latency"]["device"] for c in run.cards.values()}
st.caption(f"Latency: batch 1, median of 20 runs on {', '.join(sorted(latency_device))} where the run was trained.")
