"""Model cards (card.json as a page, its metrics at the sidebar's operating point, downloadable) and a checker for
published confusion matrices."""
import json

import pandas as pd
import plotly.express as px
import streamlit as st

from core.metrics import binary as M
from core.metrics.published import PUBLISHED, ci_text, confusion_check
from core.report import METRIC_LABELS, PRESETS, card_markdown, subtype_lines
from dashboard.frame import Run, no_run_message, preset, show_unavailable, threshold
from dashboard.loaders import predictions, scan_metrics

# card_markdown's metrics table is at 0.5 whatever the sidebar says: the page shows the card up to it, then every
# figure at the sidebar's operating point, so one page never mixes two thresholds.
CARD_METRICS_HEADING = "\n## Metrics at threshold"
CARD_METRICS = {**METRIC_LABELS, "balanced_accuracy": "Balanced accuracy", "mcc": "MCC", "pr_auc": "PR AUC",
                "brier": "Brier", "ece": "ECE"}
SPLITS = {"val": "validation", "test": "test"}
POINTS_NOTE = ("Sensitivity ≥ 95% is the highest threshold that keeps validation sensitivity at or above 95%, "
               "Specificity ≥ 95% the lowest that keeps validation specificity there. Where Youden's threshold "
               "already gives more than 95% sensitivity, the Sensitivity ≥ 95% threshold is higher than Youden's: "
               "it gives up the sensitivity beyond 95% for specificity.")


def card_facts(card: dict) -> str:
    """The card's Markdown without its metrics at 0.5 (what it is, how it was trained, its operating points), with
    its subtype AUCs, which no threshold changes."""
    return card_markdown(card).split(CARD_METRICS_HEADING)[0] + "\n".join(subtype_lines(card))


def metric_cell(met: dict, key: str) -> str:
    """"0.912 (0.853–0.951)", the value alone where it has no interval, "—" where it is undefined (NaN)."""
    value, ci = met[key], ci_text(met.get(f"{key}_ci"))
    if value != value:
        return "—"
    return f"{value:.3f}" + (f" ({ci})" if ci else "")


def metrics_table(rows: pd.DataFrame, thr: float) -> pd.DataFrame:
    """Metric x split (validation, test) at one threshold, as metric_cell writes them."""
    columns = {}
    for split, name in SPLITS.items():
        part = rows[rows["split"] == split]
        met = M.binary_metrics(part["label"], part["prob"], thr)
        columns[name] = {label: metric_cell(met, key) for key, label in CARD_METRICS.items()}
    return pd.DataFrame(columns)


def per_class_table(rows: pd.DataFrame, thr: float) -> pd.DataFrame:
    """The studies' per-class report on the test rows, "—" where a cell does not apply (accuracy has no precision)."""
    report = M.per_class_report(rows["label"], (rows["prob"] >= thr).astype(int))
    scores = report.drop(columns="support").map(lambda v: "—" if v != v else f"{v:.3f}")
    return scores.assign(support=report["support"])


def scan_line(run: Run, model: str, thr: float) -> str:
    """The test split's scan-level figures at the threshold, or "" where its slices name no scans."""
    scan = scan_metrics(*run.key, model, thr)
    if scan is None:
        return ""
    at = scan["at"]["chosen"]
    return (f"Scan level (test split: {scan['n']} scans, {scan['n_pos']} with hemorrhage; a scan scores its most "
            f"suspicious slice): AUC {metric_cell(scan, 'roc_auc')}, sensitivity {metric_cell(at, 'sensitivity')}, "
            f"specificity {metric_cell(at, 'specificity')} at this threshold.")


def readable_check(table: pd.DataFrame) -> pd.DataFrame:
    """confusion_check's table as text where a figure may be missing: "—" for what the paper did not print."""
    return table.assign(**{
        "printed in the paper": table["printed in the paper"].map(lambda v: "—" if pd.isna(v) else f"{v:.4f}"),
        "matches print": table["matches print"].map({True: "yes", False: "no"}).fillna("—")})


def show_card(run: Run, model: str) -> None:
    """One model's card, every threshold-dependent figure at the sidebar's operating point, and its downloads."""
    card, thr = run.cards[model], threshold(run.cards[model])
    st.markdown(card_facts(card))
    st.caption(POINTS_NOTE)
    if card.get("feature_importance"):
        imp = pd.DataFrame(card["feature_importance"])
        st.markdown("**Permutation feature importance** (drop in validation AUC when one feature is shuffled; "
                    "this takes the place of a CAM for a classical model)")
        st.plotly_chart(px.bar(imp.iloc[::-1], x="mean", y="feature", error_x="std", orientation="h",
                               labels={"mean": "AUC drop", "feature": ""}, height=520), width="stretch")
    rows = predictions(*run.key).query("model == @model")
    point = f"the sidebar's operating point, {PRESETS[preset()]}: t = {thr:.3f}"
    st.markdown(f"**Metrics at {point}** (95% intervals: Wilson for proportions, DeLong for AUC)")
    st.dataframe(metrics_table(rows, thr), width="stretch")
    if line := scan_line(run, model, thr):
        st.markdown(line)
    st.markdown(f"**Per-class report on the test split at {point}**, as the source studies print it")
    st.dataframe(per_class_table(rows[rows["split"] == "test"], thr), width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download card (Markdown)", card_markdown(card), f"{model}_card.md", "text/markdown",
                       help="The card as stored: its metrics table is at threshold 0.5.")
    c2.download_button("Download card (JSON)", json.dumps(card, indent=2), f"{model}_card.json", "application/json")


st.title("Model cards")
run = st.session_state.get("current_run")
if run is None or not run.listed:
    no_run_message()
else:
    show_unavailable(run)
if run is not None and run.models:
    show_card(run, st.selectbox("Model", run.models, format_func=run.display, key="card_model"))

st.header("Check a published table")
STUDY_B = "the {} of {}".format(*PUBLISHED["B"]["cited_as"].split(", "))   # as every page cites it
st.markdown("Enter a confusion matrix as printed in a paper and see every metric it implies, with Wilson 95% "
            f"intervals. Worked example: {STUDY_B} printed these matrices for 1,016 test slices, and its summary "
            "table does not match them.")
example = st.selectbox("Start from", ["", *PUBLISHED["B"]["confusion"]], key="chk_example",
                       format_func=lambda m: f"{STUDY_B[0].upper()}{STUDY_B[1:]}, {m}" if m else "my own numbers")
start = PUBLISHED["B"]["confusion"].get(example, {"tn": 50, "fp": 5, "fn": 5, "tp": 40})
cols = st.columns(4)
counts = {k: cols[i].number_input(k.upper(), 0, 10_000_000, start[k], key=f"chk_{k}_{example}")
          for i, k in enumerate(("tn", "fp", "fn", "tp"))}
if sum(counts.values()) == 0:
    st.info("Enter at least one case.")
    st.stop()
printed = PUBLISHED["B"]["models"].get(example, {})
table = confusion_check(**counts, printed=printed)
st.dataframe(readable_check(table), hide_index=True, width="stretch",
             column_config={"from the matrix": st.column_config.NumberColumn(format="%.4f")})
off = [f"{r['metric']} ({r['printed in the paper']:.2%} printed, {r['from the matrix']:.2%} from the matrix)"
       for r in table.to_dict("records") if r["matches print"] is False]
if off:
    st.warning(f"{STUDY_B[0].upper()}{STUDY_B[1:]}'s summary table disagrees with its own {example} matrix on " + "; ".join(off)
               + ". Always recompute from the matrix.")
elif printed:
    st.success(f"Every figure {STUDY_B} printed for {example} matches its matrix.")
