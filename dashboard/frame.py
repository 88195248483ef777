"""What every page's frame needs: the notice, where runs live, the run selector and its health, the operating point,
what the numbers were measured on, and the model filter the charts share."""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from core.io import store as ckpt
from core.io.progress import LOCK, live_progress, summary, trainer_alive
from core.metrics.labels import PRESETS
from core.registry import REGISTRY
from dashboard.figures import model_colours
from dashboard.loaders import cards, evaluation_report, evaluation_stamp, run_json, scored, unavailable

REPO = Path(__file__).resolve().parents[1]
NOTICE = ("**Research and teaching tool, not for clinical use.** Predictions come from models "
          "trained on small or synthetic data and must never guide the care of a patient.")
TRAIN_COMMAND = "python train.py"
# The threshold that best separates the classes on validation (sensitivity + specificity - 1): what a
# reader of a comparison expects, whatever the model's calibration; 0.5 stays one click away.
DEFAULT_PRESET = "youden"
TEST_SPLIT = ""   # the dataset selector's value for the run's own test split; the others are evaluations' names


def checkpoints_root(argv: list[str] | None = None) -> Path:
    """`-- --checkpoints DIR`, else $CHECKPOINTS_DIR, else the repository's checkpoints/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoints")
    given = parser.parse_known_args(sys.argv[1:] if argv is None else argv)[0].checkpoints
    return Path(given or os.environ.get("CHECKPOINTS_DIR") or REPO / "checkpoints")


@dataclass(frozen=True)
class Run:
    path: Path
    models: tuple[str, ...]   # the verified models: the only ones a page ranks, scores or loads
    stamp: float  # newest mtime among the files the caches read: a new card or weights file invalidates them
    unavailable: dict[str, str] = field(default_factory=dict, hash=False)   # the others, with why
    evaluations: tuple[str, ...] = ()   # stored external evaluations (RUN/evaluations/NAME), core.io.store

    @property
    def listed(self) -> set[str]:
        return {*self.models, *self.unavailable}

    @property
    def key(self) -> tuple[str, float]:
        return str(self.path), self.stamp

    @property
    def cards(self) -> dict[str, dict]:
        return cards(*self.key)

    def display(self, model: str) -> str:
        return self.cards[model].get("display_name", model)

    @property
    def colours(self) -> dict[str, str]:
        """Display name -> colour, by the model's place in the registry's order (which orders every run; models it
        lacks last): a model keeps its colour on every page and figure, whichever a filter shows or have landed."""
        order = registry_order({*REGISTRY, *self.listed})
        return model_colours([self.display(m) if m in self.listed else REGISTRY[m].display_name for m in order])


def registry_order(models) -> list[str]:
    """CNNs, sequence models, classical, ensembles, as the registry lists them; unknown names last."""
    order = {name: i for i, name in enumerate(REGISTRY)}
    return sorted(models, key=lambda m: (order.get(m, len(order)), m))


def _mtime(path: Path) -> float:
    """0 for a file gone since it was listed: a trainer's temporary file renamed in the meantime."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def open_run(path: Path) -> Run:
    """A run's completed models in registry order (CNNs, sequence models, classical, ensembles), verified once per
    stamp and split into the verified and the unavailable; reads (and caches) every card."""
    models = registry_order(ckpt.list_models(path))
    # Model folders count as well as their files: deleting a weights file changes only its folder's mtime.
    files = [path / ckpt.SPLIT, *(path / m for m in models), *(f for m in models for f in (path / m).iterdir())]
    stamp = max(_mtime(f) for f in files)
    bad = unavailable(str(path), stamp)
    return Run(path, tuple(m for m in models if m not in bad), stamp, {m: bad[m] for m in models if m in bad},
               tuple(ckpt.list_evaluations(path)))


def health(run: Run) -> str:
    """One line: how many models are verified, and each unavailable one with why."""
    line = f"{len(run.models)} of {len(run.listed)} models verified"
    if run.unavailable:
        line += f"; {len(run.unavailable)} unavailable: " + ", ".join(
            f"{run.display(m)} ({why})" for m, why in run.unavailable.items())
    return line + "."


def show_unavailable(run: Run) -> None:
    """On every page: the models that cannot be trusted, apart from what is ranked or scored, with why."""
    if run.unavailable:
        st.warning("Unavailable, so not ranked, scored or loaded here: " + "; ".join(
            f"**{run.display(m)}** (`{m}`): {why}" for m, why in run.unavailable.items()) + ".",
            icon=":material/gpp_bad:")


def sidebar() -> Run | None:
    """The notice, the run selector and the operating point; returns the selected run, if any."""
    st.sidebar.warning(NOTICE)
    root = checkpoints_root()
    runs = ckpt.list_runs(root)
    if not runs:
        st.sidebar.caption(f"No run in `{root}`.")
        return None
    path = st.sidebar.selectbox("Run", runs, format_func=lambda p: p.name, key="run")
    st.sidebar.selectbox("Operating point", list(PRESETS), index=list(PRESETS).index(DEFAULT_PRESET),
                         format_func=PRESETS.get, key="preset",
                         help="Thresholds chosen on the validation split, stored in each model card. Youden by "
                              "default: 0.5 suits only a calibrated model, which minutes of training do not give.")
    st.sidebar.caption(f"Runs from `{root}`")
    try:
        run = open_run(path)   # a damaged card is reported here, once
    except (ckpt.CheckpointError, OSError) as err:
        st.sidebar.error(f"Run {path.name} cannot be read: {err}")
        return None
    (st.sidebar.warning if run.unavailable else st.sidebar.caption)(health(run))
    if run.evaluations:
        st.sidebar.selectbox("Dataset", [TEST_SPLIT, *run.evaluations], format_func=lambda n: dataset_label(run, n),
                             key="dataset", help="What Leaderboard, Compare and Errors score: the run's own test "
                             "split, or an evaluation stored with the run (`python -m core.evaluate --run RUN --data "
                             "PATH`, or the Data page). Thresholds stay the cards', chosen on validation.")
    return run


def training_folder(run: Run | None) -> Path | None:
    """The folder a live trainer writes: the selected run, or with none selected, any under the root."""
    folders = [run.path] if run else [p.parent for p in checkpoints_root().glob(f"*/{LOCK}")]
    return next((f for f in folders if trainer_alive(f)), None)


def watch_training(run: Run | None) -> None:
    """While a trainer writes the run, a sidebar line on its progress every 3 s and a rerun of the whole app
    when a model lands (or the trainer ends); with no trainer alive, nothing is drawn or scheduled."""
    folder = training_folder(run)
    if folder is None:
        return
    landed = run.listed if run else set(ckpt.list_models(folder))

    @st.fragment(run_every=3)
    def watcher():
        state = live_progress(folder)
        if state is None or set(ckpt.list_models(folder)) != landed:
            st.rerun()
        st.info(f"Training in progress: {summary(state)}", icon=":material/model_training:")

    with st.sidebar:
        watcher()


def no_run_message() -> None:
    folder = training_folder(st.session_state.get("current_run"))
    if folder:
        st.info(f"Training is under way in `{folder}` ({summary(live_progress(folder) or {})}). Its models appear "
                "here as they finish, the classical ones within about a minute.")
        return
    st.info(f"No training run with a finished model in `{checkpoints_root()}` yet. Train the demo "
            "(synthetic head CT phantoms, a few minutes on a laptop CPU) from the repository root:")
    st.code(TRAIN_COMMAND, language="bash")
    st.caption("Then reload this page. Other folders: `streamlit run dashboard/app.py -- --checkpoints DIR` "
               "or the CHECKPOINTS_DIR environment variable.")


def require_run() -> Run:
    """The selected run with at least one verified model, its unavailable ones shown apart; else the how-to-train
    message (no finished model) or the unavailable ones alone, and a stop."""
    run = st.session_state.get("current_run")
    if run is None or not run.listed:
        no_run_message()
        st.stop()
    show_unavailable(run)
    if not run.models:
        st.stop()
    return run


def dataset_label(run: Run, name: str) -> str:
    if name == TEST_SPLIT:
        return "Test split (this run)"
    n = evaluation_report(str(run.path), name, evaluation_stamp(str(run.path), name)).get("n_cases", "?")
    return f"External: {name} ({n} cases)"


def dataset() -> str | None:
    """The sidebar's dataset: None for the run's test split, else the name of a stored evaluation of the run."""
    run, name = st.session_state.get("current_run"), st.session_state.get("dataset")
    return name if run is not None and name in run.evaluations else None


def dataset_text(name: str | None) -> str:
    """For captions: 'test split' or 'external set **NAME**'."""
    return "test split" if name is None else f"external set **{name}**"


def require_dataset(run: Run) -> tuple[str | None, tuple[str, ...]]:
    """(the sidebar's dataset, the verified models it scores): all of them on the test split, those a stored evaluation
    holds; the others are named in a caption, and with none the page stops."""
    name = dataset()
    if name is None:
        return None, run.models
    held = set(scored(*run.key, name)["model"])
    models = tuple(m for m in run.models if m in held)
    if missing := [run.display(m) for m in run.models if m not in held]:
        st.caption(f"Not in evaluation {name} (evaluated before they were trained, or with --models): "
                   + ", ".join(missing) + ".")
    if not models:
        st.info(f"Evaluation {name} holds none of this run's verified models.")
        st.stop()
    return name, models


def preset() -> str:
    return st.session_state.get("preset", DEFAULT_PRESET)


def threshold(card: dict, name: str | None = None) -> float:
    return float(card["thresholds"].get(name or preset(), 0.5))


def family_key(card: dict) -> str:
    """A saved model's family, from the registry by its name: what a page showing stored numbers needs of
    core.families without importing the networks behind it ("other" for a name this registry does not know)."""
    spec = REGISTRY.get(card["model"])
    return spec.family if spec else "other"


def budget_cut(card: dict) -> str | None:
    """How the run budget cut a network short (core.engine.budget: its share of the time left, below its own time
    budget), in words; None when it did not. A card records the share (`time_budget_s`) and, in its recipe or
    command line, the network's own budget; where neither records one, a cut shows as epochs that overran the share
    (a budget never plans fewer than two)."""
    training = card.get("training") or {}
    share, run_budget = training.get("time_budget_s"), training.get("run_budget_s")
    if share is None or not run_budget:
        return None
    own = (training.get("recipe") or {}).get("time_budget_s") or (training.get("args") or {}).get("time_budget")
    if not (share < own if own else training.get("seconds", 0) > share):
        return None
    asked = f" (its own: {own:.0f} s)" if own else ""
    return f"{training['epochs']} epochs on a {share:.0f} s share{asked} of the {run_budget:.0f} s run budget"


def sample_size(run: Run, dataset: str | None) -> tuple[int, int]:
    """(cases, cases with hemorrhage) the pages score: the test split, or the chosen stored evaluation."""
    rows = scored(*run.key, dataset).drop_duplicates("id")
    return len(rows), int(rows["label"].sum())


def measured_on(run: Run, dataset: str | None) -> str:
    """For captions: the data's kind, internal test split or external evaluation, and n."""
    n, positive = sample_size(run, dataset)
    trained = ckpt.training_data_text(run_json(*run.key, "run.json"))
    count = f"n = {n} slices, {positive} with hemorrhage"
    if dataset is None:
        return f"the internal test split of {trained} ({count})"
    source = evaluation_report(str(run.path), dataset, evaluation_stamp(str(run.path), dataset)).get("dataset", {})
    folder = Path(source.get("source", dataset)).name
    return f"{dataset_text(dataset)}, an external evaluation on folder `{folder}` ({count}; trained on {trained})"


def chart_label(run: Run, dataset: str | None) -> str:
    """For chart titles: what the numbers were measured on, in a few words."""
    return f"{'test split' if dataset is None else dataset}, n = {sample_size(run, dataset)[0]}"


def ranked_by_auc(models, aucs: dict[str, float]) -> list[str]:
    """The models, best AUC first; a model without an AUC (one class in its cases) last."""
    return sorted(models, key=lambda m: -aucs[m] if not math.isnan(aucs[m]) else math.inf)


TOP_N = 5   # models a page's charts show at first: 16 curves or bars at once read as noise
FAMILY_LABELS = {"cnn": "CNNs", "sequence": "Sequence models", "classical": "Classical", "ensemble": "Ensembles"}


def model_filter(run: Run, ranked: list[str], key: str) -> list[str]:
    """The models a page's charts draw, best AUC first: the top TOP_N at first, a family or all in one click, or any
    chosen by hand in the multiselect (which then shows the choice as "by hand")."""
    families = {m: family_key(run.cards[m]) for m in ranked}
    in_order = dict.fromkeys(families[m] for m in registry_order(ranked))
    picks = {"top": f"Top {TOP_N} by AUC", **{f: FAMILY_LABELS.get(f, f) for f in in_order}, "all": "All",
             "hand": "By hand"}
    pick_key = f"{key}_pick"

    def models_of(pick: str) -> list[str]:
        return {"top": ranked[:TOP_N], "all": ranked}.get(pick) or [m for m in ranked if families[m] == pick]

    def on_hand():
        st.session_state[pick_key] = "hand"

    if st.session_state.get(pick_key) not in picks:
        st.session_state[pick_key] = "top"
    # Set before the widgets exist: a pick follows models landing or another dataset's ranking, and a choice by hand
    # keeps only the models still offered.
    pick = st.session_state[pick_key]
    chosen = st.session_state.get(key, []) if pick == "hand" else models_of(pick)
    st.session_state[key] = [m for m in chosen if m in ranked]
    st.radio("Charts show", list(picks), format_func=picks.get, horizontal=True, key=pick_key)
    return st.multiselect("Models in the charts", ranked, format_func=run.display, key=key, on_change=on_hand)
