"""Any saved model, whatever its family: which can be trusted (`unavailable_models`), loading (`load_predictor`)
and P(hemorrhage) per case (`predict_all`; every output of a subtypes head: `predict_outputs_all`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from core.families import family_of_card
from core.families.base import Cases, Predictor
from core.io import store


def model_problem(model_dir: str | Path, card: dict) -> str:
    """Why a saved model cannot be trusted, in a few words ('' when it can): the cheap checks `load` repeats,
    made before anything is loaded (the files its family needs, the weights' sha256 against the card)."""
    try:
        family = family_of_card(card)
    except store.CheckpointError as err:
        return str(err)
    return store.folder_problem(model_dir, family.weights_file, card.get("weights_sha256"))


def lost_members(members: Mapping[str, Sequence[str]], available: Collection[str]) -> dict[str, str]:
    """The models among `members` (model -> the models it needs) that need one not `available`, with why: an
    ensemble's weights were fitted to its members' probabilities, so without one it means nothing."""
    return {model: f"member {lost[0]} is unavailable" for model, needs in members.items()
            if (lost := [m for m in needs if m not in available])}


def unavailable_models(run_dir: str | Path, cards: dict[str, dict]) -> dict[str, str]:
    """The models of a run (name -> card) that cannot be trusted, with why; the others are verified."""
    out = {m: why for m, card in cards.items() if (why := model_problem(Path(run_dir) / m, card))}
    needs = {m: card.get("members", ()) for m, card in cards.items() if m not in out}
    return {**out, **lost_members(needs, set(cards) - set(out))}


def load_predictor(model_dir: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model in model_dir, its files verified against the card's sha256 before use."""
    return family_of_card(store.load_card(model_dir)).load(model_dir, device)


def predict_outputs_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                        manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """(N, len(p.outputs)) probabilities per case per predictor, column 0 P(hemorrhage) (ensembles after members);
    images_at(size) -> (N, S, S[, C]) uint8."""
    cases, outputs = Cases(images_at, manifest), {}
    for name, p in sorted(predictors.items(), key=lambda item: bool(item[1].members)):
        outputs[name] = p.predict_outputs(cases)
        cases.probs[name] = outputs[name][:, 0]
    return {name: outputs[name] for name in predictors}


def predict_all(predictors: dict[str, Predictor], images_at: Callable[[int], np.ndarray],
                manifest: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """P(hemorrhage) per case per predictor (ensembles after members); images_at(size) -> (N, S, S[, C]) uint8."""
    return {name: p[:, 0] for name, p in predict_outputs_all(predictors, images_at, manifest).items()}
