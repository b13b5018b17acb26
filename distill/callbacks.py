"""Python callbacks: what a run tells code of the user's while it trains.

Subclass :class:`Callback` and override the hooks you need; pass instances to
``distill.run(..., callbacks=[...])``. Every hook is called on the main process only, after the
run has done what the hook names (a checkpoint is on disk, verified; a stage's model is saved and
reloaded). A hook that raises stops the run there, as any error would: what is on disk stays a
resumable state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.errors import DistillError


class Callback:
    """Hooks a run calls; each does nothing unless overridden."""

    def on_log(self, stage: str, step: int, logs: dict[str, float]) -> None:
        """Every ``train.log_every`` steps: ``lr``, ``train/loss`` and its parts (``train/hard``,
        ``train/soft``, ``train/hidden``), ``train/grad_norm``, ``train/examples_per_s``."""

    def on_evaluate(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        """After each evaluation on the validation split (``train.eval_every``, and the last step)."""

    def on_checkpoint(self, stage: str, step: int, path: Path) -> None:
        """After checkpoint ``path`` (``train.checkpoint_every``) is written and verified."""

    def on_stage_end(self, stage: str, folder: Path, metrics: dict[str, float]) -> None:
        """After a training stage's model is saved into ``folder`` and reloaded from it (teacher
        fine-tuning or training, the student, the baseline); ``metrics`` are its last validation
        scores. Called for stages finished earlier and read back on a resume too."""


class CallbackList:
    """The run's callbacks, each hook called in order on the main process."""

    def __init__(self, callbacks: Sequence[Callback] = (), main_process: bool = True):
        callbacks = list(callbacks)
        for c in callbacks:
            if not isinstance(c, Callback):
                raise DistillError(
                    f"callbacks=: instances of distill.Callback (subclass it), not a {type(c).__name__}"
                )
        self.callbacks = callbacks if main_process else []

    def on_log(self, stage: str, step: int, logs: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_log(stage, step, dict(logs))

    def on_evaluate(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_evaluate(stage, step, dict(metrics))

    def on_checkpoint(self, stage: str, step: int, path: Path) -> None:
        for c in self.callbacks:
            c.on_checkpoint(stage, step, Path(path))

    def on_stage_end(self, stage: str, folder: Path, metrics: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_stage_end(stage, Path(folder), dict(metrics))
