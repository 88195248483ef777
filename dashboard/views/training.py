"""Training: loss, accuracy and validation AUC per epoch (history.csv), training time and speed."""
import pandas as pd
import streamlit as st

from core.io.progress import live_progress, summary
from dashboard import figures
from dashboard.frame import require_run, training_folder
from dashboard.loaders import histories


@st.fragment(run_every=2)
def live_section(folder) -> None:
    """The model training now and its epochs so far, redrawn as progress.json changes."""
    state = live_progress(folder)
    if state is None:   # the trainer ended: the page again, without this section
        st.rerun()
    st.subheader("Training in progress")
    st.progress(len(state.get("done", [])) / max(1, len(state.get("models", []))), text=summary(state))
    hist = pd.DataFrame(state.get("history", [])).assign(model=state.get("current"))
    if not hist.empty:
        left, right = st.columns(2)
        left.plotly_chart(figures.history(hist, None, "val_auc", "Validation ROC AUC so far"), width="stretch")
        right.plotly_chart(figures.history(hist, "train_loss", "val_loss", "Loss so far"), width="stretch")


run = require_run()
st.title("Training")
if folder := training_folder(run):
    live_section(folder)
models = st.multiselect("Models", run.models, default=list(run.models), format_func=run.display)
hist = histories(*run.key)
hist = hist[hist["model"].isin(models)].assign(model=lambda h: h["model"].map(run.display))
if hist.empty:
    st.info("Pick at least one model.")
    st.stop()

left, right = st.columns(2)
left.plotly_chart(figures.history(hist, "train_loss", "val_loss", "Loss (binary cross-entropy)"), width="stretch")
right.plotly_chart(figures.history(hist, "train_acc", "val_acc", "Accuracy (threshold 0.5)"), width="stretch")
left.plotly_chart(figures.history(hist, None, "val_auc", "Validation ROC AUC"), width="stretch")
right.plotly_chart(figures.history(hist, None, "img_per_s", "Training speed (images/s)"), width="stretch")
st.caption("Training curves use augmented batches and a weighted loss, validation curves clean images: "
           "a gap between them is expected. The saved weights are those of the best validation AUC.")

rows = []
for m in models:
    card, h = run.cards[m], hist[hist["model"] == run.display(m)]
    rows.append({"Model": run.display(m), "Epochs": len(h), "Training (s)": card["training"]["seconds"],
                 "s / epoch": h["seconds"].mean(), "img/s (mean)": h["img_per_s"].mean(),
                 "Data wait (%)": 100 * h["data_wait_s"].sum() / h["seconds"].sum(),
                 "Best val AUC": h["val_auc"].max(), "Device": card["training"]["device"],
                 "Pretrained": card["training"]["pretrained"]})
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.2f")
                            for c in table.columns if table[c].dtype == float})
