"""Leaderboard: one row per verified model, metrics with 95% intervals at the sidebar's operating point on the test
split or a stored external evaluation, and the generalization gap between them."""
import pandas as pd
import streamlit as st

from core.families import family_of_card
from core.metrics import binary as M
from core.metrics.published import PUBLISHED, ci_text, published_rows
from core.report import METRIC_LABELS as METRICS, PRESETS
from dashboard import figures
from dashboard.frame import Run, dataset_text, preset, require_dataset, require_run, threshold
from dashboard.loaders import scan_metrics, scored, test_metrics

BOOTSTRAP = 300  # resamples for the F1 interval (no closed form): ~0.4 s a model on 750 cases, cached


def leaderboard(run: Run, models: tuple[str, ...], dataset: str | None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per model at the sidebar's operating point on the dataset, and the metrics dicts behind it."""
    rows, mets = [], {}
    for model in models:
        card = run.cards[model]
        met = mets[model] = test_metrics(*run.key, model, threshold(card), BOOTSTRAP, dataset=dataset)
        call = M.one_class_call(met)
        row = {"Model": run.display(model), "Family": family_of_card(card).key,
               "Source": "this run" if dataset is None else f"this run on {dataset}",
               "Threshold": met["threshold"], "Calls": f"⚠ every case {call}" if call else "both classes"}
        for key, label in METRICS.items():
            row[label], row[f"{label} 95% CI"] = met[key], ci_text(met.get(f"{key}_ci"))
        row.update({"Latency p50 (ms)": card["latency"]["batch1_ms_p50"], "Params (M)": card["params"] / 1e6,
                    "Size (MB)": card["size_bytes"] / 1e6, "Training (s)": card["training"]["seconds"],
                    "Test n": met["n"]})
        if scan := scan_metrics(*run.key, model, threshold(card), dataset):   # where the rows name their scans
            row.update({"Scan AUC": scan["roc_auc"], "Scan AUC 95% CI": ci_text(scan["roc_auc_ci"]),
                        "Scans n": scan["n"]})
        rows.append(row)
    return pd.DataFrame(rows), mets


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
    """core.published rows, labelled, with the leaderboard's column names."""
    pub = published_rows()
    out = pd.DataFrame({
        "Model": [f"{m} (study {s}, {'published' if f == 'published' else 'recomputed'})"
                  for s, m, f in zip(pub["study"], pub["model"], pub["figures"])],
        "Source": ["published" if f == "published" else "published matrix, recomputed here" for f in pub["figures"]]})
    for key, label in METRICS.items():
        if key in pub:
            out[label] = pub[key].to_numpy()
    out["Recall (as printed)"] = pub.get("recall")  # study A does not say which class its recall is
    out["Latency p50 (ms)"] = pub.get("inference_ms")
    out["Test n"] = [PUBLISHED[s]["test_set"]["n"] for s in pub["study"]]
    return out


run = require_run()
st.title("Leaderboard")
dataset, models = require_dataset(run)
st.caption(f"Run **{run.path.name}**, {dataset_text(dataset)}, operating point **{PRESETS[preset()]}** "
           "(change them in the sidebar"
           + ("; thresholds chosen on this run's validation split, never re-tuned on the external set" if dataset
              else "") + "). Intervals: Wilson for proportions, DeLong for AUC, bootstrap for F1. "
           "Scan AUC, where cases belong to scans (series): each scan scores its most suspicious slice. "
           "Click a column header to sort.")

board, mets = leaderboard(run, models, dataset)
one_class = {run.display(m): call for m, met in mets.items() if (call := M.one_class_call(met))}
if one_class:
    cases = "test case" if dataset is None else "external case"
    st.warning("At this operating point " + "; ".join(f"**{m}** calls every {cases} {c}" for m, c in one_class.items())
               + ". Its accuracy is then just the share of that class, not skill, and its sensitivity or specificity "
               "is 0: its threshold is off, which says nothing yet about how it ranks cases (AUC). Try another "
               "operating point in the sidebar.")
show_published = st.toggle("Add the source studies' published figures as reference rows", value=False)
table = pd.concat([board, published_board()], ignore_index=True) if show_published else board
number = st.column_config.NumberColumn
st.dataframe(table, hide_index=True, width="stretch", column_config={
    **{label: number(format="%.3f") for label in [*METRICS.values(), "Recall (as printed)"]},
    "Threshold": number(format="%.3f"), "Scan AUC": number(format="%.3f"), "Latency p50 (ms)": number(format="%.1f"),
    "Params (M)": number(format="%.2f"), "Size (MB)": number(format="%.1f"), "Training (s)": number(format="%.0f")})
if show_published:
    st.caption("Rows marked **published** are the studies' own figures on their own data and hardware, not "
               "computed here; *recomputed* rows score study B's printed confusion matrices with the same code as "
               "this run, and disagree with its summary table (see Model cards → Check a published table).")

if run.evaluations:
    st.subheader("Internal vs external")
    gaps = generalization(run)
    st.dataframe(gaps, hide_index=True, width="stretch",
                 column_config={c: number(format="%+.3f" if c.endswith("gap") else "%.3f")
                                for c in gaps.columns if c != "Model" and "CI" not in c})
    st.caption("AUC with DeLong 95% intervals on the run's own test split and on each stored evaluation; the gap is "
               "external minus internal: how much a model loses on data from elsewhere.")

names = {m: run.display(m) for m in models}
left, right = st.columns(2)
left.plotly_chart(figures.metric_bars(mets, names, METRICS), width="stretch")
right.plotly_chart(figures.radar(mets, names, METRICS), width="stretch")
st.plotly_chart(figures.accuracy_vs_latency(board), width="stretch")
latency_device = {run.cards[m]["latency"]["device"] for m in models}
st.caption(f"Latency: batch 1, median of 20 runs on {', '.join(sorted(latency_device))} where the run was trained.")
