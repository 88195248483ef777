"""Compare: ROC/PR curves, a live threshold and prevalence, sensitivity per subtype, calibration and DeLong tests (test
split or a stored external evaluation, chosen in the sidebar) of the models the filter picks, at first the sidebar's
operating point."""
import pandas as pd
import streamlit as st

from core.metrics import binary as M
from core.metrics.labels import PRESETS
from core.teach import share_table, subtype_members, subtype_rows
from dashboard import figures
from dashboard.frame import (chart_label, measured_on, model_filter, preset, ranked_by_auc, require_dataset,
                             require_run, threshold)
from dashboard.loaders import delong_matrix, scored, test_metrics, test_probs

run = require_run()
st.title("Compare models")
dataset, scored_models = require_dataset(run)
st.caption(f"Run **{run.path.name}**: {measured_on(run, dataset)} (change it in the sidebar).")
aucs = {m: test_metrics(*run.key, m, 0.5, dataset=dataset)["roc_auc"] for m in scored_models}
models = model_filter(run, ranked_by_auc(scored_models, aucs), "cmp_models")
if not models:
    st.info("Pick at least one model.")
    st.stop()
probs = test_probs(*run.key, scored_models, dataset)
y = probs["label"].to_numpy()
names, colours, measured = {m: run.display(m) for m in models}, run.colours, chart_label(run, dataset)

MODES = {"slider": "Slider (same threshold for every model)", **PRESETS}
# The threshold mode opens at the sidebar's operating point and follows it whenever that changes.
if "cmp_mode" not in st.session_state or st.session_state.get("cmp_mode_of") != preset():
    st.session_state["cmp_mode"] = st.session_state["cmp_mode_of"] = preset()


def use_slider():
    """Moving the slider means one threshold for every model."""
    st.session_state["cmp_mode"] = "slider"


@st.fragment
def operating_point():
    """Everything the threshold and prevalence sliders drive; reruns alone when they move."""
    mode = st.radio("Threshold", list(MODES), format_func=MODES.get, horizontal=True, key="cmp_mode",
                    help="The presets use each model's own threshold, chosen on the validation split.")
    slider = st.slider("Same threshold for every model", 0.0, 1.0, 0.5, 0.01, key="cmp_threshold",
                       on_change=use_slider, help="Moving it applies it to every model.")
    prevalence = st.slider("Prevalence for PPV / NPV (%)", 0.5, 95.0, round(200 * y.mean()) / 2, 0.5,
                           key="cmp_prevalence", help="PPV and NPV depend on how common hemorrhage is where the "
                                                      "model is used; the share in these cases is the default.") / 100
    rows, roc_at, pr_at, source = [], {}, {}, "test" if dataset is None else "external"
    for m in models:
        thr = slider if mode == "slider" else threshold(run.cards[m], mode)
        met = test_metrics(*run.key, m, thr, dataset=dataset)
        ppv, npv = M.ppv_npv_at_prevalence(met["sensitivity"], met["specificity"], prevalence)
        roc_at[names[m]] = (1 - met["specificity"], met["sensitivity"], thr)
        pr_at[names[m]] = (met["sensitivity"], met["precision"], thr)
        rows.append({"Model": names[m], "Threshold": thr, "TN": met["tn"], "FP": met["fp"], "FN": met["fn"],
                     "TP": met["tp"], "Sensitivity": met["sensitivity"], "Specificity": met["specificity"],
                     "Accuracy": met["accuracy"], "F1": met["f1"], f"PPV ({source})": met["precision"],
                     f"PPV at {prevalence:.1%}": ppv, f"NPV at {prevalence:.1%}": npv})
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch", height="content",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in table.columns if table[c].dtype == float})
    for start in range(0, len(rows), 4):
        for col, r in zip(st.columns(4), rows[start:start + 4]):
            title = f"{r['Model']} at t = {r['Threshold']:.3f}"
            col.plotly_chart(figures.confusion(r["TN"], r["FP"], r["FN"], r["TP"], title), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(figures.roc({names[m]: M.roc_points(y, probs[m]) for m in models}, roc_at, colours, measured),
                      width="stretch")
    right.plotly_chart(figures.pr({names[m]: M.pr_points(y, probs[m]) for m in models}, pr_at, y.mean(), colours,
                                  measured), width="stretch")


operating_point()


def subtype_sensitivity() -> None:
    """Models x subtypes: each model's sensitivity on each subtype's bleeds at its sidebar threshold (core.teach)."""
    st.subheader("Sensitivity per subtype")
    facts = scored(*run.key, dataset).drop_duplicates("id").set_index("id").reindex(probs.index)
    members = subtype_members(facts)
    rows = [r for m in models for r in subtype_rows(names[m], y, (probs[m] >= threshold(run.cards[m])).astype(int),
                                                    members)]
    if not rows:
        st.caption("The subtypes of these bleeds are not known.")
        return
    table = share_table(pd.DataFrame(rows)).rename(columns=lambda c: c.removeprefix("sensitivity: "))
    st.dataframe(table.rename_axis(index="Model", columns=None), width="stretch")
    st.caption(f"Each model at its **{PRESETS[preset()]}** threshold (sidebar): the share of a subtype's bleeds it "
               "calls hemorrhage, with its Wilson 95% interval, caught of n; a bleed of two subtypes counts in both. "
               f"On the {measured}.")


subtype_sensitivity()

st.subheader("Calibration and paired tests")
left, right = st.columns(2)
bins = {names[m]: M.reliability_bins(y, probs[m]) for m in models}
ece = {names[m]: test_metrics(*run.key, m, 0.5, dataset=dataset)["ece"] for m in models}
left.plotly_chart(figures.reliability(bins, ece, colours, measured), width="stretch")
if len(models) > 1:
    p = delong_matrix(*run.key, tuple(models), dataset).rename(index=names, columns=names)
    right.plotly_chart(figures.significance_map(p, colours, measured), width="stretch")
    right.caption("Colour: how significant the difference between two models' AUCs is on these cases; hover a cell "
                  "for its p-value. With few cases nearly nothing is significant; that is a finding too.")
else:
    right.info("Pick two or more models for the DeLong tests.")
