"""Sequence-level distillation (Kim & Rush, 2016): the teacher's beam-search outputs as training targets.

The teacher translates every training source once. The outputs are a teacher store like the soft
labels of ``teacher.cache`` (:func:`distill.teacher_store.build_shards`), in ``OUTPUT/pseudo_targets``:
safetensors shards (each shard's token ids, flattened, with per-example offsets), each verified by
its recorded SHA-256, written by the process that generated it; ``complete.json`` last. An
interrupted generation continues with the missing shards; a finished one is reused by later runs
with the same teacher weights, data and settings, and refused with others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from safetensors.torch import load_file

from distill import teacher_store

log = logging.getLogger(__name__)

COMPLETE = teacher_store.COMPLETE
STARTED = teacher_store.SETTINGS


def pseudo_targets(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    train: Dataset,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    folder: Path,
    *,
    settings: dict[str, Any],
    batch_size: int,
    task: Any,
    chunk_size: int = 1024,
) -> Dataset:
    """``train`` (tokenized: input_ids, attention_mask, labels) with the teacher's outputs as labels.

    The task generates the targets and lays them out (``teacher_targets``, ``with_targets``:
    translation translates the sources, causal_lm completes the prompts).

    ``settings`` (beams, length limit, ...) is recorded with the teacher's and the data's
    fingerprints; a finished folder made otherwise is an error rather than silently reused.
    """

    def compute(rows: list[int]) -> dict[str, torch.Tensor]:
        outputs = _generate(accelerator, teacher, train, rows, collate, settings, batch_size, task)
        lengths = torch.tensor([len(o) for o in outputs], dtype=torch.long)
        return {
            "rows": torch.tensor(rows, dtype=torch.long),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
            "tokens": torch.tensor([t for o in outputs for t in o], dtype=torch.int32),
        }

    names = teacher_store.build_shards(
        accelerator, teacher, train, folder, settings=settings, chunk=chunk_size, compute=compute
    )
    outputs: list[list[int]] = []
    for name in names:
        shard = load_file(str(folder / name))
        tokens, offsets = shard["tokens"].tolist(), shard["offsets"].tolist()
        outputs += [tokens[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return task.with_targets(train, outputs)


def _generate(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    train: Dataset,
    rows: list[int],
    collate: Callable,
    settings: dict[str, Any],
    batch_size: int,
    task: Any,
) -> list[list[int]]:
    """The teacher's outputs for ``rows``, in order (this process generates them all)."""
    outputs: list[list[int]] = []
    teacher.eval()
    with torch.inference_mode(), accelerator.autocast():  # the teacher in the run's precision
        for start in range(0, len(rows), batch_size):
            batch = collate([train[i] for i in rows[start : start + batch_size]])
            batch = {
                k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
            }
            outputs += task.teacher_targets(teacher, batch, settings)
    return outputs
