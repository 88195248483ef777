"""Leaderboard: which model is best. One row per verified model, best ROC AUC first, with its DeLong interval, its
sensitivity and specificity at the sidebar's operating point and whether its AUC is tied with the best's (paired
DeLong test), on the test split or a stored external evaluation; the generalization gap between them; charts of the
models the filter picks."""
import math

import pandas as pd
import streamlit as st

from core.metrics import binary as M
from core.metrics.labels import METRIC_LABELS as METRICS, PRESETS
from core.metrics.published import PUBLISHED, ci_text, published_rows
from core.metrics.stats import delong_test
from dashboard import figures
from dashboard.frame import (Run, budget_cut, chart_label, family_key, measured_on, model_filter, preset,
                             ranked_by_auc, require_dataset, require_run, threshold)
from dashboard.loaders import scan_metrics, scored, test_metrics, test_probs

BOOTSTRAP = 300  # resamples for the F1 interval (no closed form): ~0.4 s a model on 750 cases, cached
TIE_P = 0.05     # a paired DeLong p at or above it: the AUC cannot be told from the best's on these cases
TIED = "Tied with the best"
# What a reader asks first, in this order; every other column follows.
FIRST = ["Model", "AUC", "AUC 95% CI", "Sensitivity", "Specificity", "Threshold", TIED]
number = st.column_config.NumberColumn
COLUMNS = {**{label: number(format="%.3f") for label in [*METRICS.values(), "Recall (as printed)"]},
           "Threshold": number(format="%.3f"), "Scan AUC": number(format="%.3f"),
           "Latency p50 (ms)": number(format="%.1f"), "Params (M)": number(format="%.2f"),
           "Size (MB)": number(format="%.1f"), "Training (s)": number(format="%.0f")}


def model_row(run: Run, model: str, met: dict, dataset: str | None) -> dict:
    """One model's leaderboard row at the sidebar's operating point."""
    card, call = run.cards[model], M.one_class_call(met)
    row = {"Model": run.display(model), "Threshold": met["threshold"],
           "Calls": f"⚠ every case {call}" if call else "both classes", "Family": family_key(card),
           "Source": "this run" if dataset is None else f"this run on {dataset}"}
    for key, label in METRICS.items():
        row[label], row[f"{label} 95% CI"] = met[key], ci_text(met.get(f"{key}_ci"))
    row.update({"Epochs": card["training"].get("epochs"), "Run budget cut": budget_cut(card) or "",
                "Latency p50 (ms)": card["latency"]["batch1_ms_p50"], "Params (M)": card["params"] / 1e6,
                "Size (MB)": card["size_bytes"] / 1e6, "Training (s)": card["training"]["seconds"], "Test n": met["n"]})
    if scan := scan_metrics(*run.key, model, threshold(card), dataset):   # where the rows name their scans
        row.update({"Scan AUC": scan["roc_auc"], "Scan AUC 95% CI": ci_text(scan["roc_auc_ci"]), "Scans n": scan["n"]})
    return row


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def ties_with_best(run: Run, ranked: list[str], aucs: dict[str, float], dataset: str | None) -> dict[str, str]:
    """Per model, whether its AUC is tied with the best's: the paired DeLong test on the cases both scored."""
    leader = ranked[0]
    if math.isnan(aucs[leader]):
        return {}
    probs = test_probs(*run.key, tuple(ranked), dataset)
    marks = {leader: "★ best"}
    for model in ranked[1:]:
        both = probs[[leader, model]].notna().all(axis=1)
        p = delong_test(probs.loc[both, "label"], probs.loc[both, leader], probs.loc[both, model])
        marks[model] = "" if math.isnan(p) else f"✓ tied ({p_text(p)})" if p >= TIE_P else f"lower ({p_text(p)})"
    return marks


def leaderboard(run: Run, models: tuple[str, ...], dataset: str | None,
                bootstrap: int) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per model, best AUC first, the columns a reader asks for first leading; and the metrics behind it
    (`bootstrap` resamples for F1's interval; 0: none)."""
    mets = {m: test_metrics(*run.key, m, threshold(run.cards[m]), bootstrap, dataset=dataset) for m in models}
    aucs = {m: mets[m]["roc_auc"] for m in models}
    ranked = ranked_by_auc(models, aucs)
    ties = ties_with_best(run, ranked, aucs, dataset)
    board = pd.DataFrame([{**model_row(run, m, mets[m], dataset), TIED: ties.get(m, "")} for m in ranked])
    return board[FIRST + [c for c in board.columns if c not in FIRST]], {m: mets[m] for m in ranked}


def generalization(run: Run) -> pd.DataFrame:
    """Per model: its AUC (DeLong 95% CI) on the test split and on each stored evaluation, and the gap (external
    minus internal). AUC needs no threshold: 0.5 shares the Compare page's cache."""
    auc = METRICS["roc_auc"]
    internal = {m: test_metrics(*run.key, m, 0.5) for m in run.models}
    table = pd.DataFrame({"Model": [run.display(m) for m in run.models],
                          f"Internal {auc}": [internal[m]["roc_auc"] for m in run.models],
                          f"Internal {auc} 95% CI": [ci_text(internal[m]["roc_auc_ci"]) for m in run.models]})
    for name in run.evaluations:
        held = set(scored(*run.key, name)["model"])
        ext = {m: test_metrics(*run.key, m, 0.5, dataset=name) for m in run.models if m in held}
        table[f"{name}: {auc}"] = [ext[m]["roc_auc"] if m in ext else float("nan") for m in run.models]
        table[f"{name}: {auc} 95% CI"] = [ci_text(ext[m]["roc_auc_ci"]) if m in ext else "" for m in run.models]
        table[f"{name}: gap"] = table[f"{name}: {auc}"] - table[f"Internal {auc}"]
    return table


def published_board() -> pd.DataFrame:
    """core.published rows, each labelled with its study's citation, with the leaderboard's column names; what a
    study did not report is left empty (show_board's placeholder)."""
    pub = published_rows()
    out = pd.DataFrame({
        "Model": [f"{m} ({cited}; {'published' if f == 'published' else 'recomputed'})"
                  for cited, m, f in zip(pub["cited_as"], pub["model"], pub["figures"])],
        "Source": ["published" if f == "published" else "published matrix, recomputed here" for f in pub["figures"]]})
    for key, label in METRICS.items():
        if key in pub:
            out[label] = pub[key].to_numpy()
    out["Recall (as printed)"] = pub.get("recall")  # the 2024 thesis does not say which class its recall is
    out["Latency p50 (ms)"] = pub.get("inference_ms")
    out["Test n"] = [PUBLISHED[s]["test_set"]["n"] for s in pub["study"]]
    return out


def show_board(slot, board: pd.DataFrame, published: bool) -> None:
    """The leaderboard in its slot, with the published reference rows under it when asked for; a cell with no
    figure is blank (a study that did not report it, a model without a scan AUC), never "None"."""
    table = pd.concat([board, published_board()], ignore_index=True) if published else board
    slot.dataframe(table, hide_index=True, width="stretch", height="content", column_config=COLUMNS, placeholder="")


def caption(run: Run, dataset: str | None) -> str:
    """What the table was measured on, at which operating point, how it is ranked, and which networks the run
    budget cut short."""
    cut = [run.display(m) for m in run.models if budget_cut(run.cards[m])]
    return (f"Run **{run.path.name}**: {measured_on(run, dataset)}; operating point **{PRESETS[preset()]}** (change "
            "them in the sidebar" + ("; thresholds chosen on this run's validation split, never re-tuned on the "
                                     "external set" if dataset else "") + "). Best AUC first. "
            f"**{TIED}**: the paired DeLong test on the same cases cannot tell its AUC from the best's "
            f"(p ≥ {TIE_P}). Intervals: DeLong for AUC, Wilson for proportions, bootstrap for F1. Scan AUC, where "
            "cases belong to scans (series): each scan scores its most suspicious slice."
            + (f" **Cut short by the run budget:** {', '.join(cut)} (column *Run budget cut*)." if cut else ""))


run = require_run()
st.title("Leaderboard")
dataset, models = require_dataset(run)
st.caption(caption(run, dataset))

# Drawn first without F1's bootstrap interval (BOOTSTRAP: the one slow number on a cold cache), then complete.
board, mets = leaderboard(run, models, dataset, bootstrap=0)
one_class = {run.display(m): call for m, met in mets.items() if (call := M.one_class_call(met))}
if one_class:
    cases = "test case" if dataset is None else "external case"
    st.warning("At this operating point " + "; ".join(f"**{m}** calls every {cases} {c}" for m, c in one_class.items())
               + ". Its accuracy is then just the share of that class, not skill, and its sensitivity or specificity "
               "is 0: its threshold is off, which says nothing yet about how it ranks cases (AUC). Try another "
               "operating point in the sidebar.")
show_published = st.toggle("Add the source studies' published figures as reference rows", value=False)
slot = st.empty()
show_board(slot, board, show_published)
board, mets = leaderboard(run, models, dataset, BOOTSTRAP)
show_board(slot, board, show_published)
if show_published:
    st.caption("Rows marked **published** are the studies' own figures on their own data and hardware, not "
               "computed here; *recomputed* rows score the 2025 journal paper's printed confusion matrices with the "
               "same code as this run, and disagree with its summary table (see Model cards → Check a published "
               "table). Blank: not reported.")

if run.evaluations:
    st.subheader("Internal vs external")
    gaps = generalization(run)
    st.dataframe(gaps, hide_index=True, width="stretch", placeholder="",
                 column_config={c: number(format="%+.3f" if c.endswith("gap") else "%.3f")
                                for c in gaps.columns if c != "Model" and "CI" not in c})
    st.caption("AUC with DeLong 95% intervals on the run's own test split and on each stored evaluation; the gap is "
               "external minus internal: how much a model loses on data from elsewhere.")

st.subheader("Charts")
shown = model_filter(run, list(mets), "lb_models")
if not shown:
    st.info("Pick at least one model for the charts.")
    st.stop()
names, colours, measured = {m: run.display(m) for m in shown}, run.colours, chart_label(run, dataset)
left, right = st.columns(2)
left.plotly_chart(figures.metric_bars({m: mets[m] for m in shown}, names, METRICS, colours, measured),
                  width="stretch")
right.plotly_chart(figures.metric_table({m: mets[m] for m in shown}, names, METRICS, colours, measured),
                   width="stretch")
accuracy = f"accuracy at {PRESETS[preset()]} ({measured})"
st.plotly_chart(figures.accuracy_vs_latency(board[board["Model"].isin(names.values())], colours, accuracy),
                width="stretch")
latency_device = {run.cards[m]["latency"]["device"] for m in shown}
st.caption(f"Latency: batch 1, median of 20 runs on {', '.join(sorted(latency_device))} where the run was trained. "
           "Thresholds and metrics at the sidebar's operating point; every chart shows the models picked above.")
