"""Compare: ROC/PR curves, a live threshold and prevalence, calibration and DeLong tests (test split or a stored
external evaluation, chosen in the sidebar)."""
import pandas as pd
import streamlit as st

from core.metrics import binary as M
from core.report import PRESETS
from dashboard import figures
from dashboard.frame import dataset_text, require_dataset, require_run, threshold
from dashboard.loaders import delong_matrix, test_metrics, test_probs

run = require_run()
st.title("Compare models")
dataset, scored_models = require_dataset(run)
st.caption(f"Run **{run.path.name}**, {dataset_text(dataset)} (change it in the sidebar).")
models = st.multiselect("Models", scored_models, default=list(scored_models), format_func=run.display)
if not models:
    st.info("Pick at least one model.")
    st.stop()
probs = test_probs(*run.key, scored_models, dataset)
y = probs["label"].to_numpy()
names = {m: run.display(m) for m in models}

MODES = {"slider": "Slider (same threshold for every model)", **PRESETS}


@st.fragment
def operating_point():
    """Everything the threshold and prevalence sliders drive; reruns alone when they move."""
    mode = st.radio("Threshold", list(MODES), format_func=MODES.get, horizontal=True, key="cmp_mode",
                    help="The presets use each model's own threshold, chosen on the validation split.")
    slider = st.slider("Threshold", 0.0, 1.0, 0.5, 0.01, key="cmp_threshold", disabled=mode != "slider")
    prevalence = st.slider("Prevalence for PPV / NPV (%)", 0.5, 95.0, round(200 * y.mean()) / 2, 0.5,
                           key="cmp_prevalence", help="PPV and NPV depend on how common hemorrhage is where the "
                                                      "model is used; the share in these cases is the default.") / 100
    rows, roc_at, pr_at, source = [], {}, {}, "test" if dataset is None else "external"
    for m in models:
        thr = slider if mode == "slider" else threshold(run.cards[m], mode)
        met = test_metrics(*run.key, m, thr, dataset=dataset)
        ppv, npv = M.ppv_npv_at_prevalence(met["sensitivity"], met["specificity"], prevalence)
        roc_at[names[m]] = (1 - met["specificity"], met["sensitivity"])
        pr_at[names[m]] = (met["sensitivity"], met["precision"])
        rows.append({"Model": names[m], "Threshold": thr, "TN": met["tn"], "FP": met["fp"], "FN": met["fn"],
                     "TP": met["tp"], "Sensitivity": met["sensitivity"], "Specificity": met["specificity"],
                     "Accuracy": met["accuracy"], "F1": met["f1"], f"PPV ({source})": met["precision"],
                     f"PPV at {prevalence:.1%}": ppv, f"NPV at {prevalence:.1%}": npv})
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in table.columns if table[c].dtype == float})
    for start in range(0, len(rows), 4):
        for col, r in zip(st.columns(4), rows[start:start + 4]):
            title = f"{r['Model']} @ {r['Threshold']:.2f}"
            col.plotly_chart(figures.confusion(r["TN"], r["FP"], r["FN"], r["TP"], title), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(figures.roc({names[m]: M.roc_points(y, probs[m]) for m in models}, roc_at), width="stretch")
    right.plotly_chart(figures.pr({names[m]: M.pr_points(y, probs[m]) for m in models}, pr_at, y.mean()),
                       width="stretch")


operating_point()

st.subheader("Calibration and paired tests")
left, right = st.columns(2)
bins = {names[m]: M.reliability_bins(y, probs[m]) for m in models}
ece = {names[m]: test_metrics(*run.key, m, 0.5, dataset=dataset)["ece"] for m in models}
left.plotly_chart(figures.reliability(bins, ece), width="stretch")
if len(models) > 1:
    p = delong_matrix(*run.key, tuple(models), dataset).rename(index=names, columns=names)
    right.plotly_chart(figures.pvalue_matrix(p), width="stretch")
    right.caption("Small p: the two AUCs differ by more than chance on these cases would explain. "
                  "With few test cases nearly nothing is significant; that is a finding too.")
else:
    right.info("Select two or more models for the DeLong matrix.")
