"""Sequence-level distillation (Kim & Rush, 2016): the teacher's beam-search outputs as training targets.

The teacher translates every training source once. The outputs are written to
``OUTPUT/pseudo_targets`` in chunks, each appearing under its final name only when complete, so
an interrupted generation continues with the first missing chunk, and a finished one (recorded in
``complete.json`` with the settings that made it) is reused by later runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from distill import atomic
from distill.errors import DistillError
from distill.tasks.translation import generation_start

log = logging.getLogger(__name__)

COMPLETE = "complete.json"
STARTED = "settings.json"  # the settings the chunks in the folder were made with


def pseudo_targets(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    train: Dataset,
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    folder: Path,
    *,
    settings: dict[str, Any],
    batch_size: int,
    chunk_size: int = 1024,
) -> Dataset:
    """``train`` (tokenized: input_ids, attention_mask, labels) with the teacher's outputs as labels.

    ``settings`` (beams, length limit, ...) is recorded; a finished folder made with other settings
    is an error rather than silently reused.
    """
    marker = folder / COMPLETE
    recorded = atomic.read_json(marker)
    if isinstance(recorded, dict) and (folder / "dataset").is_dir():
        if recorded.get("settings") != settings or recorded.get("examples") != len(train):
            raise DistillError(
                f"{folder} holds teacher outputs made with other settings; delete it or choose another output.dir"
            )
        return load_from_disk(str(folder / "dataset"))

    teacher.to(accelerator.device)
    n_chunks = (len(train) + chunk_size - 1) // chunk_size
    started = {"settings": settings, "examples": len(train), "chunk_size": chunk_size}
    if accelerator.is_main_process:
        with atomic.disk_errors(folder):
            if atomic.read_json(folder / STARTED) != atomic.strict(started):
                atomic.remove(folder)  # chunks of other settings are never mixed in
            folder.mkdir(parents=True, exist_ok=True)
            atomic.clean_leftovers(folder)
        atomic.write_json(folder / STARTED, started)
    accelerator.wait_for_everyone()
    done = sum(1 for i in range(n_chunks) if (folder / _chunk_name(i)).is_dir())
    if done:
        accelerator.print(f"teacher outputs: {done} of {n_chunks} chunks already written, continuing")
    progress = tqdm(
        total=len(train),
        initial=min(done * chunk_size, len(train)),
        desc="teacher outputs",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    try:
        for index in range(n_chunks):
            if (folder / _chunk_name(index)).is_dir():
                continue
            rows = list(range(index * chunk_size, min((index + 1) * chunk_size, len(train))))
            outputs = _generate(accelerator, teacher, train, rows, collate, settings, batch_size)
            if accelerator.is_main_process:
                chunk = train.select(rows).remove_columns("labels").add_column("labels", outputs)
                with atomic.new_folder(folder / _chunk_name(index)) as part, atomic.disk_errors(folder):
                    chunk.save_to_disk(str(part))
            accelerator.wait_for_everyone()
            progress.update(len(rows))
    finally:
        progress.close()

    if accelerator.is_main_process:
        whole = concatenate_datasets([load_from_disk(str(folder / _chunk_name(i))) for i in range(n_chunks)])
        with atomic.new_folder(folder / "dataset") as part, atomic.disk_errors(folder):
            whole.save_to_disk(str(part))
        atomic.write_json(marker, {"settings": settings, "examples": len(train)})
        for i in range(n_chunks):
            atomic.remove(folder / _chunk_name(i))
    accelerator.wait_for_everyone()
    return load_from_disk(str(folder / "dataset"))


def _chunk_name(index: int) -> str:
    return f"chunk_{index:05d}"


def _generate(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    train: Dataset,
    rows: list[int],
    collate: Callable,
    settings: dict[str, Any],
    batch_size: int,
) -> list[list[int]]:
    """The teacher's outputs for ``rows``, in order: each process translates its share."""
    outputs: dict[int, list[int]] = {}
    with accelerator.split_between_processes(rows) as mine:
        for start in range(0, len(mine), batch_size):
            ids = mine[start : start + batch_size]
            batch = collate([train[i] for i in ids])
            with torch.inference_mode():
                generated = teacher.generate(
                    input_ids=batch["input_ids"].to(accelerator.device),
                    attention_mask=batch["attention_mask"].to(accelerator.device),
                    num_beams=settings["num_beams"],
                    max_new_tokens=settings["max_new_tokens"],
                    do_sample=False,
                )
            for i, seq in zip(ids, generated.tolist(), strict=True):
                outputs[i] = _clean(seq, teacher)
    gathered = gather_object([outputs])
    merged: dict[int, list[int]] = {}
    for part in gathered:
        merged.update(part)
    return [merged[i] for i in rows]


def _clean(sequence: list[int], model: Any) -> list[int]:
    """A generated sequence as training labels: no decoder start token (the one ``generate()``
    started with), nothing after the end token."""
    start = generation_start(model)
    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    if sequence and sequence[0] == start:
        sequence = sequence[1:]
    if eos in sequence:
        sequence = sequence[: sequence.index(eos) + 1]
    else:
        sequence = [t for t in sequence if t != pad] + [eos]
    return sequence
