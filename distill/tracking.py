"""TensorBoard with one run per stage, so that its charts overlay the stages.

Accelerate's own TensorBoard tracker writes one run: the student's loss and the baseline's would
be two charts (``distill/train/loss``, ``baseline/train/loss``). Here each stage is a run of its
own, ``OUTPUT/logs/<stage>`` (``teacher-finetune``, ``distill``, ``baseline``), with the same tags
(``train/loss``, ``lr``, ``validation/accuracy``, ...): TensorBoard draws the student's and the
baseline's curves on one chart. Every other tracker gets the stage in the name of each value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from accelerate.tracking import GeneralTracker, on_main_process


class StageTensorBoard(GeneralTracker):
    name = "tensorboard"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, logging_dir: str | os.PathLike):
        super().__init__()
        self.logging_dir = Path(logging_dir)
        self.writers: dict[str, Any] = {}
        self.config: dict[str, Any] = {}

    @property
    def tracker(self) -> dict[str, Any]:
        return self.writers

    @on_main_process
    def start(self) -> None:
        self.logging_dir.mkdir(parents=True, exist_ok=True)

    @on_main_process
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self.config = dict(values)  # written as text into each stage's run when it starts

    def _writer(self, stage: str) -> Any:
        if stage not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.logging_dir / stage))
            if self.config:
                text = yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True)
                writer.add_text("recipe", "```\n" + text + "```")
            self.writers[stage] = writer
        return self.writers[stage]

    @on_main_process
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        touched = set()
        for key, value in values.items():
            stage, _, tag = key.partition("/")
            if not tag:
                stage, tag = "run", key
            writer = self._writer(stage)
            if isinstance(value, (int, float)):
                writer.add_scalar(tag, value, global_step=step)
            elif isinstance(value, str):
                writer.add_text(tag, value, global_step=step)
            touched.add(stage)
        for stage in touched:
            self.writers[stage].flush()

    @on_main_process
    def finish(self) -> None:
        for writer in self.writers.values():
            writer.close()
