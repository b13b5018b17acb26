"""Task families. Each module implements the protocol of :mod:`distill.tasks.base`."""

from distill.tasks import (
    causal_lm,
    classification,
    multi_label,
    regression,
    token_classification,
    translation,
)

TASKS = {
    "classification": classification,
    "translation": translation,
    "causal_lm": causal_lm,
    "token_classification": token_classification,
    "regression": regression,
    "multi_label_classification": multi_label,
}
