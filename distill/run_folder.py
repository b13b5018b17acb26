"""The output folder of a run: what it may hold when a run starts, and how a run opens it.

A run writes ``config.yaml`` first and ``complete.json`` last. A folder with neither is new; with
the first alone it holds an unfinished run, which only ``--resume`` with the same recipe continues;
with both it holds a finished run, which only ``output.overwrite=true`` replaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill import atomic, recipe_yaml
from distill.artefacts import RECORD, json_equal, read_record
from distill.config import RecipeConfig, dump_yaml, to_dict
from distill.errors import DistillError
from distill.report import REPORT_FILES

TEACHER_DIR = "teacher"  # the fine-tuned teacher, when the recipe fine-tunes one
STUDENT_DIR = "student"  # the final student: save_pretrained + tokenizer
BASELINE_DIR = "baseline"  # train.baseline: the same student trained without the teacher
STAGES_DIR = "stages"  # per-stage checkpoints and completion records
PSEUDO_DIR = "pseudo_targets"  # sequence-level KD: the teacher's outputs for the training sources
STORE_DIR = "teacher_outputs"  # teacher.cache: the teacher's soft labels for the training split
RUN_RECORD = RECORD  # OUTPUT/complete.json, written last of all: the run is finished
CONFIG_FILE = "config.yaml"  # the resolved recipe, written first: a run was started here
# What a run makes after its teacher: replaced by output.overwrite, never mixed with another run's.
ADAPTER_DIRS = ("student_adapter", "baseline_adapter")  # student.lora: the adapters, beside the merged models
RUN_OUTPUTS = (STUDENT_DIR, BASELINE_DIR, *ADAPTER_DIRS, STAGES_DIR, "results.json", *REPORT_FILES)


def check(out: Path, cfg: RecipeConfig, *, resume: bool) -> None:
    """Refuse, in one line, a folder this run must not write into. Writes nothing."""
    if resume and cfg.output.overwrite:
        raise DistillError("--resume continues a run and output.overwrite=true starts afresh: choose one")
    if cfg.output.overwrite or not out.is_dir():
        return
    if (out / RUN_RECORD).is_file():
        raise DistillError(
            f"{out} holds a finished run; set output.overwrite=true to replace it, or choose another output.dir"
        )
    if not (out / CONFIG_FILE).is_file():
        earlier = [name for name in RUN_OUTPUTS if (out / name).exists()]
        if earlier:
            raise DistillError(
                f"{out} holds outputs of another run ({', '.join(earlier)}); choose another output.dir "
                "or set output.overwrite=true"
            )
        return  # a new folder (perhaps with a teacher or teacher outputs to reuse)
    if not resume:
        raise DistillError(
            f"{out} holds an unfinished run; pass --resume to finish it, or set output.overwrite=true to start afresh"
        )
    try:
        recorded = recipe_yaml.load((out / CONFIG_FILE).read_text(encoding="utf-8"), CONFIG_FILE)
    except (OSError, UnicodeDecodeError, DistillError):
        recorded = None
    if not isinstance(recorded, dict):
        raise DistillError(f"{out / CONFIG_FILE} is damaged, so the run cannot be resumed safely")
    changed = changed_keys(recorded, to_dict(cfg))
    given = passed_from_python(changed, recorded, to_dict(cfg))
    if given:
        raise DistillError(
            f"{out} was started with another {', '.join(given)} passed from Python (its fingerprint "
            "differs: other weights, content or code); resume with the same objects, or set "
            "output.overwrite=true to start afresh"
        )
    if changed:
        raise DistillError(
            f"{out} was started with other settings ({', '.join(changed[:4])} changed); resume with the same "
            "recipe and overrides, or set output.overwrite=true to start afresh"
        )


def open_for_run(out: Path, cfg: RecipeConfig) -> None:
    """Create the folder, clear what ``output.overwrite`` replaces and what interrupted writes left,
    and record the resolved recipe. Main process only."""
    with atomic.disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        if cfg.output.overwrite:
            for name in (*RUN_OUTPUTS, RUN_RECORD, CONFIG_FILE):
                atomic.remove(out / name)
            if read_record(out / PSEUDO_DIR / RECORD) is None:
                atomic.remove(out / PSEUDO_DIR)  # unfinished outputs, perhaps of other settings
            if read_record(out / STORE_DIR / RECORD) is None:
                atomic.remove(out / STORE_DIR)
        atomic.clean_leftovers(out, recursive=True)  # a kill can fall inside any write
    atomic.write_text(out / CONFIG_FILE, dump_yaml(cfg))


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (``output.*`` and ``train.report_to`` aside: where the folder
    and the logs are, not what the run computes)."""
    a, b = flat(old), flat(new)
    # A key the folder's record lacks was added to the recipe since: that run had its default.
    defaults = flat(to_dict(RecipeConfig()))
    return sorted(
        k
        for k in set(a) | set(b)
        if not k.startswith("output.")
        and k not in WHERE_LOGS_GO
        and not json_equal(a.get(k, defaults.get(k)), b.get(k))
    )


WHERE_LOGS_GO = {"train.report_to"}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; values other than numbers, strings and booleans as text
    (as TensorBoard takes them)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def passed_from_python(keys: list[str], *raws: dict[str, Any]) -> list[str]:
    """Those of the dotted ``keys`` that name an object passed from Python in any of ``raws``."""
    return [k for k in keys if any(_passed_from_python(raw, k) for raw in raws)]


def _passed_from_python(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return False
        node = node.get(part)
    values = node if isinstance(node, list) else [node]  # loss.terms: a list of them
    return any(isinstance(v, str) and v.startswith("memory:") for v in values)
