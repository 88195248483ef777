"""The five hemorrhage subtypes: one vocabulary, in one order, for every reader, painter, phantom and head (a leaf:
imports nothing)."""
from __future__ import annotations

INTRAPARENCHYMAL, SUBDURAL, EPIDURAL, SUBARACHNOID, INTRAVENTRICULAR = SUBTYPES = (
    "intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")
# The field's abbreviations (CQ500's reads.csv writes them in capitals).
ABBREVIATIONS = {"iph": INTRAPARENCHYMAL, "sdh": SUBDURAL, "edh": EPIDURAL, "sah": SUBARACHNOID,
                 "ivh": INTRAVENTRICULAR}


def flag_column(subtype: str) -> str:
    """A dataset row's column for one subtype: 1/0, NaN where unknown."""
    return f"sub_{subtype}"


FLAG_COLUMNS = [flag_column(s) for s in SUBTYPES]
OUTPUTS = ("any", *SUBTYPES)   # a subtypes head's outputs in order: P(hemorrhage) first, as every one-logit model's
