"""distill from Python: ``distill.run``, ``distill.validate``, ``distill.evaluate``.

The same stages, checks, resume and report as the ``distill`` command, with a recipe given as a
name, a path, a dict or a :class:`~distill.config.RecipeConfig`, and objects in memory (a model, a
tokenizer, a data set) in place of the recipe's paths. Errors raise :class:`DistillError`, whose
message is the command's one line.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distill import memory
from distill.config import RecipeConfig, apply_overrides, from_dict, read_recipe, to_dict
from distill.errors import DistillError


@dataclasses.dataclass(frozen=True)
class Result:
    """What a run wrote: the folders, the report (``report.json``) and ``results.json``."""

    output_dir: Path
    report: dict[str, Any]
    results: dict[str, Any]

    @property
    def student_dir(self) -> Path:
        return self.output_dir / "student"

    @property
    def baseline_dir(self) -> Path | None:
        folder = self.output_dir / "baseline"
        return folder if folder.is_dir() else None

    @property
    def report_files(self) -> dict[str, Path]:
        return {suffix: self.output_dir / f"report.{suffix}" for suffix in ("json", "md", "png")}

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """Each model's test metrics, by name (teacher, student, baseline, ...)."""
        return {m["name"]: m["metrics"] for m in self.report["models"]}

    @property
    def primary_metric(self) -> str:
        return self.report["primary_metric"]


@dataclasses.dataclass(frozen=True)
class Validation:
    """What ``validate`` checked: the resolved recipe and what it found."""

    config: RecipeConfig
    teacher: str  # where the teacher comes from
    teacher_type: str
    teacher_layers: int
    labels: list[str] | None
    splits: dict[str, int]  # examples per split
    tokenizer: str
    tokenizer_size: int


def recipe_config(recipe: Any, overrides: Sequence[str] = ()) -> RecipeConfig:
    """A recipe given as a name (``quickstart``), a path, a dict or a RecipeConfig, with
    ``key=value`` overrides applied and every value checked."""
    return from_dict(_raw_recipe(recipe, overrides))


def _raw_recipe(recipe: Any, overrides: Sequence[str]) -> dict[str, Any]:
    from distill.cli import find_recipe

    if isinstance(overrides, str):
        raise DistillError("overrides: a list of key=value strings, e.g. ['train.steps=100']")
    if isinstance(recipe, RecipeConfig):
        raw = to_dict(recipe)
    elif isinstance(recipe, dict):
        raw = copy.deepcopy(recipe)
    elif isinstance(recipe, (str, os.PathLike)):
        return read_recipe(find_recipe(os.fspath(recipe)), list(overrides))
    else:
        raise DistillError(
            f"recipe: a recipe name, a path, a dict or a RecipeConfig, not a {type(recipe).__name__}"
        )
    return apply_overrides(raw, list(overrides))


@contextmanager
def _given(
    recipe: Any,
    overrides: Sequence[str],
    *,
    teacher: Any,
    student: Any,
    tokenizer: Any,
    data: Any,
    loss_terms: Sequence[Any] = (),
) -> Iterator[RecipeConfig]:
    """The checked recipe, with the objects passed from Python in place of its paths (named by
    their fingerprints); their temporary folders are removed when the block ends."""
    raw = _raw_recipe(recipe, overrides)
    references: list[str] = []
    try:
        if isinstance(loss_terms, (str, bytes)) or not isinstance(loss_terms, Sequence):
            raise DistillError("loss_terms=: a list of distill.LossTerm")
        if loss_terms:
            if _section(raw, "loss").get("terms"):
                raise DistillError("loss_terms=: the recipe names loss.terms already; pass the terms once")
            terms = [memory.add_loss_term(term) for term in loss_terms]
            references.extend(terms)
            raw["loss"] = {**_section(raw, "loss"), "terms": terms}
        if tokenizer is not None and teacher is None:
            raise DistillError(
                "tokenizer=: passed with teacher= (the tokenizer the teacher was trained with)"
            )
        if teacher is not None:
            if tokenizer is None:
                raise DistillError("teacher=: pass its tokenizer too (tokenizer=...)")
            if _section(raw, "teacher").get("architecture"):
                raise DistillError("teacher=: the recipe builds its teacher from teacher.architecture")
            references.append(memory.add_model("teacher", teacher, tokenizer))
            raw["teacher"] = {**_section(raw, "teacher"), "name_or_path": references[-1]}
        if student is not None:
            shared = tokenizer if tokenizer is not None else _teacher_tokenizer(raw)
            references.append(memory.add_model("student", student, shared))
            raw["student"] = {
                **_section(raw, "student"),
                "init": "pretrained",
                "name_or_path": references[-1],
            }
        if data is not None:
            references.append(memory.add_data(data))
            section = {k: v for k, v in _section(raw, "data").items() if k not in _DATA_SOURCES}
            raw["data"] = {**section, "dataset": references[-1]}
        yield from_dict(raw)
    finally:
        memory.release(references)


def _objects(
    teacher: Any, student: Any, tokenizer: Any, data: Any, loss_terms: Sequence[Any]
) -> dict[str, Any]:
    """What ``run`` and ``validate`` pass to :func:`_given`: the objects given from Python."""
    return {
        "teacher": teacher,
        "student": student,
        "tokenizer": tokenizer,
        "data": data,
        "loss_terms": loss_terms,
    }


_DATA_SOURCES = ("dataset", "dataset_config", "files", "synthetic")  # what data= replaces


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    section = raw.get(name)
    if section is not None and not isinstance(section, dict):
        raise DistillError(f"{name}: expected a mapping")
    return section or {}


def _teacher_tokenizer(raw: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    from distill.modeling import load_pretrained

    source = _section(raw, "teacher").get("name_or_path")
    if not source:
        raise DistillError("student=: the recipe's teacher has no tokenizer yet (teacher.architecture)")
    return load_pretrained(AutoTokenizer.from_pretrained, source, "teacher tokenizer")


def run(
    recipe: Any,
    *,
    teacher: Any = None,
    student: Any = None,
    tokenizer: Any = None,
    data: Any = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    loss_terms: Sequence[Any] = (),
    overrides: Sequence[str] = (),
) -> Result:
    """Run a recipe from start to finish, as ``distill run`` does.

    ``teacher`` (a PreTrainedModel of the task's class, with its ``tokenizer``), ``student`` (a
    PreTrainedModel: the student starts from it, ``student.init: pretrained``) and ``data`` (a
    ``Dataset``, the training split, or a ``DatasetDict``) replace the recipe's paths. Every check
    of :func:`validate` runs before anything is written. ``resume=True`` finishes an interrupted run;
    given other objects than the run started with, it is refused, naming what changed.
    ``callbacks`` are :class:`distill.Callback` instances, called on the main process;
    ``loss_terms`` are :class:`distill.LossTerm` instances, added to the distillation stage's loss
    (recorded in the run by name and a fingerprint of their code, so a resume with other terms is
    refused).
    """
    from distill import stages

    stages.quiet_libraries()
    with _given(recipe, overrides, **_objects(teacher, student, tokenizer, data, loss_terms)) as cfg:
        results = stages.run(cfg, resume=resume, callbacks=callbacks)
    report = results.pop("report")
    return Result(Path(cfg.output.dir), report, results)


def validate(
    recipe: Any,
    *,
    teacher: Any = None,
    student: Any = None,
    tokenizer: Any = None,
    data: Any = None,
    resume: bool = False,
    loss_terms: Sequence[Any] = (),
    overrides: Sequence[str] = (),
) -> Validation:
    """Every check ``run`` makes before it writes anything, and nothing written: the recipe, the
    output folder (held by a live run, finished, or started with other settings), data, labels,
    tokenizers, and the teacher and a trial student on the longest inputs the recipe allows."""
    from distill import folder_lock, run_folder
    from distill.modeling import num_layers
    from distill.plan import prepare
    from distill.stages import quiet_libraries

    quiet_libraries()
    with _given(recipe, overrides, **_objects(teacher, student, tokenizer, data, loss_terms)) as cfg:
        plan = prepare(cfg)
        folder_lock.refuse_if_held(Path(cfg.output.dir))
        run_folder.check(Path(cfg.output.dir), plan.cfg, resume=resume)
    source = cfg.teacher.name_or_path or (
        f"built from teacher.architecture, tokenizer of {len(plan.tokenizer)} pieces"
    )
    return Validation(
        config=cfg,
        teacher=source,
        teacher_type=plan.teacher_config.model_type,
        teacher_layers=num_layers(plan.teacher_config),
        labels=plan.label_names,
        splits={name: len(split) for name, split in plan.splits.items()},
        tokenizer=type(plan.tokenizer).__name__,
        tokenizer_size=len(plan.tokenizer),
    )


def evaluate(
    recipe: Any,
    *,
    teacher: Any = None,
    tokenizer: Any = None,
    data: Any = None,
    students: Sequence[str] = (),
    baselines: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure saved models side by side, as ``distill evaluate`` does: by default the recipe's
    output folder (its teacher, student and baseline); ``students`` / ``baselines`` name other
    folders. A ``teacher`` or ``data`` passed in memory replaces the recipe's. Returns the report
    (``report.json``'s content), written into ``out`` (default: the recipe's output folder)."""
    from distill.compare import evaluate_saved
    from distill.stages import quiet_libraries

    quiet_libraries()
    with _given(recipe, overrides, teacher=teacher, student=None, tokenizer=tokenizer, data=data) as cfg:
        return evaluate_saved(
            cfg,
            teacher=cfg.teacher.name_or_path if teacher is not None else None,
            students=[os.fspath(s) for s in students],
            baselines=[os.fspath(b) for b in baselines],
            out=os.fspath(out) if out is not None else None,
        )
