"""Resumable checkpoints that say what they hold, and are checked before they are trusted.

A checkpoint is ``STAGE/checkpoints/step_N``: Accelerate's ``save_state`` (model, optimizer, each
process's RNG state), the scheduler, the loop's state (step, logged history, every process's
running loss sums) and, written last, ``manifest.json``: every file with its size and SHA-256.
It is built under ``.partial_step_N`` and renamed into place by the main process only after every
process has finished writing into it. Loading reads the manifest back: a damaged latest checkpoint
is skipped, with a one-line warning, in favour of the one before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from distill import atomic
from distill.errors import DistillError

log = logging.getLogger(__name__)

PREFIX = "step_"
MANIFEST = "manifest.json"
LOOP_STATE = "trainer_state.json"  # step and logged history (main process)
SCHEDULER = "scheduler.json"  # the learning-rate schedule's state: numbers, so JSON (nothing to unpickle)
OLD_SCHEDULER = "scheduler.pt"  # the same, from earlier versions: read with torch's restricted unpickler


def running_file(rank: int) -> str:
    return f"running_{rank}.json"  # one process's loss sums since the last log


def listed(stage_dir: Path) -> list[Path]:
    """The checkpoints under their final names, oldest first."""
    root = Path(stage_dir) / "checkpoints"
    found = [p for p in root.glob(f"{PREFIX}*") if p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save(
    accelerator: Accelerator,
    stage_dir: Path,
    step: int,
    *,
    history: list[dict[str, Any]],
    running: list[float],
    scheduler: Any,
    keep: int,
) -> Path:
    """Write checkpoint ``step_N`` of the stage; keep the ``keep`` newest. Every process calls it."""
    root = Path(stage_dir) / "checkpoints"
    final = root / f"{PREFIX}{step}"
    partial = root / f"{atomic.PARTIAL}{PREFIX}{step}"
    if accelerator.is_main_process:
        with atomic.disk_errors(partial):
            atomic.remove(partial)
            root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with atomic.disk_errors(partial):
        accelerator.save_state(str(partial))
        (partial / running_file(accelerator.process_index)).write_text(json.dumps(running))
    # Every process has finished writing its files before the checkpoint is sealed and renamed.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.disk_errors(partial):
            (partial / LOOP_STATE).write_text(
                json.dumps({"step": step, "history": atomic.strict(history)}, allow_nan=False)
            )
            (partial / SCHEDULER).write_text(json.dumps(scheduler.state_dict(), allow_nan=False))
            files = {
                str(p.relative_to(partial)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(partial.rglob("*"))
                if p.is_file()
            }
            manifest = {"step": step, "processes": accelerator.num_processes, "files": files}
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
            atomic.replace_folder(partial, final)
            for old in listed(stage_dir)[:-keep]:
                atomic.remove(old)
    accelerator.wait_for_everyone()
    return final


def problem(checkpoint: Path, processes: int) -> str | None:
    """What is wrong with ``checkpoint`` (a missing, resized or altered file), or None if intact."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is missing or unreadable"
    if manifest.get("processes") != processes:
        return f"written by {manifest.get('processes')} processes, this run has {processes}"
    for name, record in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{name} has {size} bytes, {record['bytes']} were written"
        if _sha256(path) != record["sha256"]:
            return f"{name} was altered (checksum differs)"
    return None


def latest_intact(accelerator: Accelerator, stage_dir: Path, name: str) -> Path | None:
    """The newest intact checkpoint of the stage; damaged newer ones are skipped with a warning.

    ``None`` when the stage has none; a :class:`DistillError` when it has some but none is intact.
    """
    found = listed(stage_dir)
    damaged = []
    for checkpoint in reversed(found):
        why = problem(checkpoint, accelerator.num_processes)
        if why is None:
            if damaged and accelerator.is_main_process:
                log.warning(
                    "%s: checkpoint %s is damaged (%s); resuming from %s instead",
                    name,
                    damaged[0][0].name,
                    damaged[0][1],
                    checkpoint.name,
                )
            return checkpoint
        damaged.append((checkpoint, why))
    if damaged:
        listing = "; ".join(f"{c.name}: {why}" for c, why in damaged)
        raise DistillError(
            f"{name}: no intact checkpoint to resume from in {Path(stage_dir) / 'checkpoints'} ({listing}); "
            "delete that folder to start the stage afresh"
        )
    return None


def load(accelerator: Accelerator, checkpoint: Path, scheduler: Any) -> tuple[int, list, list[float]]:
    """Restore model, optimizer, RNG and scheduler states; returns (step, history, running sums)."""
    # Accelerate reads its files with torch's restricted unpickler (weights_only=True), but skips
    # random states it cannot read with only a log line: read them first, so that such a file
    # stops the resume instead of silently leaving dropout's random stream where it is.
    from accelerate.utils import load as restricted_load

    restricted_load(checkpoint / f"random_states_{accelerator.process_index}.pkl")
    accelerator.load_state(str(checkpoint))
    if (checkpoint / SCHEDULER).is_file():
        scheduler.load_state_dict(json.loads((checkpoint / SCHEDULER).read_text()))
    else:
        scheduler.load_state_dict(torch.load(checkpoint / OLD_SCHEDULER, weights_only=True))
    state = json.loads((checkpoint / LOOP_STATE).read_text())
    running = json.loads((checkpoint / running_file(accelerator.process_index)).read_text())
    return state["step"], state["history"], running


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
