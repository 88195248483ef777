"""Training: loss, accuracy and validation AUC per epoch (history.csv), training time and speed, and what the run
budget cut short."""
import pandas as pd
import streamlit as st

from core.io.progress import live_progress, summary
from core.registry import get_spec
from dashboard import figures
from dashboard.frame import Run, budget_cut, require_run, training_folder
from dashboard.loaders import histories


def networks(run: Run, models) -> list[str]:
    """The models trained in epochs of batches: their cards record `training.augment`; classical models and
    ensembles are fitted once."""
    return [m for m in models if "augment" in run.cards[m]["training"]]


def batches_text(run: Run, models: list[str]) -> str:
    """What the cards say the training curves were measured on: augmented batches or not."""
    networks_shown = networks(run, models)
    augmented = [run.display(m) for m in networks_shown if run.cards[m]["training"]["augment"]]
    if not networks_shown:
        return "None of these models trains in epochs: each was fitted once (one point a chart)."
    if not augmented:
        kind = "un-augmented batches (every card: augmentation off)"
    elif len(augmented) == len(networks_shown):
        kind = "augmented batches (rotation, zoom, flip, jitter; every card: augmentation on)"
    else:
        kind = f"augmented batches for {', '.join(augmented)} and un-augmented ones for the others (their cards)"
    return (f"Training curves use {kind} and a class-weighted loss, validation curves the validation split as "
            "it is: a gap between them is expected. The saved weights are those of the best validation AUC.")


@st.fragment(run_every=2)
def live_section(folder, colours: dict[str, str]) -> None:
    """The model training now and its epochs so far, redrawn as progress.json changes."""
    state = live_progress(folder)
    if state is None:   # the trainer ended: the page again, without this section
        st.rerun()
    st.subheader("Training in progress")
    st.progress(len(state.get("done", [])) / max(1, len(state.get("models", []))), text=summary(state))
    if history := state.get("history"):
        hist = pd.DataFrame(history).assign(model=get_spec(state["current"]).display_name)
        left, right = st.columns(2)
        left.plotly_chart(figures.history(hist, None, "val_auc", "Validation ROC AUC so far", colours), width="stretch")
        right.plotly_chart(figures.history(hist, "train_loss", "val_loss", "Loss so far", colours), width="stretch")


def speed_table(run: Run, models: list[str], hist: pd.DataFrame) -> pd.DataFrame:
    """Per model: epochs (and how the run budget cut them), time, speed, data wait, best validation AUC."""
    rows = []
    for m in models:
        card, h = run.cards[m], hist[hist["model"] == run.display(m)]
        rows.append({"Model": run.display(m), "Epochs": len(h), "Run budget cut": budget_cut(card) or "",
                     "Training (s)": card["training"]["seconds"], "s / epoch": h["seconds"].mean(),
                     "img/s (mean)": h["img_per_s"].mean(),
                     "Data wait (%)": 100 * h["data_wait_s"].sum() / h["seconds"].sum(),
                     "Best val AUC": h["val_auc"].max(), "Device": card["training"]["device"],
                     "Pretrained": card["training"]["pretrained"]})
    return pd.DataFrame(rows)


run = require_run()
st.title("Training")
if folder := training_folder(run):
    live_section(folder, run.colours)
# The networks at first: the others are fitted once, a single point where curves are read.
models = st.multiselect("Models", run.models, default=networks(run, run.models) or list(run.models),
                        format_func=run.display, key="train_models")
if not models:
    st.info("Pick at least one model.")
    st.stop()
everyone = histories(*run.key)
hist = pd.concat([everyone[everyone["model"] == m] for m in models]).assign(model=lambda h: h["model"].map(run.display))

colours = run.colours
left, right = st.columns(2)
left.plotly_chart(figures.history(hist, "train_loss", "val_loss", "Loss (binary cross-entropy)", colours),
                  width="stretch")
right.plotly_chart(figures.history(hist, "train_acc", "val_acc", "Accuracy (threshold 0.5)", colours), width="stretch")
left.plotly_chart(figures.history(hist, None, "val_auc", "Validation ROC AUC", colours), width="stretch")
right.plotly_chart(figures.history(hist, None, "img_per_s", "Training speed (images/s)", colours), width="stretch")
st.caption(batches_text(run, models))

table = speed_table(run, models, hist)
st.dataframe(table, hide_index=True, width="stretch", height="content",
             column_config={c: st.column_config.NumberColumn(format="%.2f")
                            for c in table.columns if table[c].dtype == float})
