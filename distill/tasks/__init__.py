"""Task families. Each module offers the same few names; see ``classification`` for the list."""

from distill.tasks import causal_lm, classification, translation

TASKS = {"classification": classification, "translation": translation, "causal_lm": causal_lm}
