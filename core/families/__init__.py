"""The four model families behind one interface (core.families.base.Family), and which one a model is."""
from __future__ import annotations

from core.families.base import Family
from core.families.classical import CLASSICAL
from core.families.cnn import CNN
from core.families.ensemble import ENSEMBLE
from core.families.sequence import SEQUENCE
from core.io.store import CheckpointError
from core.registry import ModelSpec

FAMILIES: dict[str, Family] = {f.key: f for f in (CNN, SEQUENCE, CLASSICAL, ENSEMBLE)}


def family_of(spec: ModelSpec) -> Family:
    """The family of a registry model."""
    return FAMILIES[spec.family]


def family_of_card(card: dict) -> Family:
    """The family of a saved model; cards written before families were recorded are CNNs."""
    key = card.get("family", CNN.key)
    if key not in FAMILIES:
        raise CheckpointError(f"the card names an unknown family {key!r}")
    return FAMILIES[key]
