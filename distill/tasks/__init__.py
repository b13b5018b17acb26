"""Task families. Each module offers the same few names; see ``classification`` for the list."""

from distill.tasks import classification, translation

TASKS = {"classification": classification, "translation": translation}
