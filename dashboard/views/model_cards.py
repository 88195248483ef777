"""Model cards (card.json as a page, downloadable) and a checker for published confusion matrices."""
import json

import pandas as pd
import streamlit as st

from core.metrics import binary as M
from core.metrics.published import PUBLISHED, confusion_check
from core.report import PRESETS, card_markdown
from dashboard.frame import no_run_message, preset, show_unavailable, threshold
from dashboard.loaders import predictions

st.title("Model cards")
run = st.session_state.get("current_run")
if run is None or not run.listed:
    no_run_message()
else:
    show_unavailable(run)
if run is not None and run.models:
    model = st.selectbox("Model", run.models, format_func=run.display, key="card_model")
    card = run.cards[model]
    st.markdown(card_markdown(card))
    if card.get("feature_importance"):
        import plotly.express as px
        imp = pd.DataFrame(card["feature_importance"])
        st.markdown("**Permutation feature importance** (drop in validation AUC when one feature is shuffled; "
                    "this takes the place of a CAM for a classical model)")
        st.plotly_chart(px.bar(imp.iloc[::-1], x="mean", y="feature", error_x="std", orientation="h",
                               labels={"mean": "AUC drop", "feature": ""}, height=520), width="stretch")
    rows = predictions(*run.key).query("model == @model and split == 'test'").reset_index(drop=True)
    thr = threshold(card)
    st.markdown(f"**Per-class report on the test split at {PRESETS[preset()]} (t = {thr:.3f})**, "
                "as the source studies print it")
    st.dataframe(M.per_class_report(rows["label"], (rows["prob"] >= thr).astype(int)), width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download card (Markdown)", card_markdown(card), f"{model}_card.md", "text/markdown")
    c2.download_button("Download card (JSON)", json.dumps(card, indent=2), f"{model}_card.json", "application/json")

st.header("Check a published table")
st.markdown("Enter a confusion matrix as printed in a paper and see every metric it implies, with Wilson 95% "
            "intervals. Worked example: study B printed these matrices for 1,016 test slices, and its summary "
            "table does not match them.")
example = st.selectbox("Start from", ["", *PUBLISHED["B"]["confusion"]], key="chk_example",
                       format_func=lambda m: f"Study B, {m}" if m else "my own numbers")
start = PUBLISHED["B"]["confusion"].get(example, {"tn": 50, "fp": 5, "fn": 5, "tp": 40})
cols = st.columns(4)
counts = {k: cols[i].number_input(k.upper(), 0, 10_000_000, start[k], key=f"chk_{k}_{example}")
          for i, k in enumerate(("tn", "fp", "fn", "tp"))}
if sum(counts.values()) == 0:
    st.info("Enter at least one case.")
    st.stop()
printed = PUBLISHED["B"]["models"].get(example, {})
table = confusion_check(**counts, printed=printed)
st.dataframe(table, hide_index=True, width="stretch", column_config={
    c: st.column_config.NumberColumn(format="%.4f") for c in ("from the matrix", "printed in the paper")})
off = [f"{r['metric']} ({r['printed in the paper']:.2%} printed, {r['from the matrix']:.2%} from the matrix)"
       for r in table.to_dict("records") if r["matches print"] is False]
if off:
    st.warning(f"Study B's summary table disagrees with its own {example} matrix on " + "; ".join(off)
               + ". Always recompute from the matrix.")
elif printed:
    st.success(f"Every figure study B printed for {example} matches its matrix.")
