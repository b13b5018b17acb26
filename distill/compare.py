"""``distill evaluate``: saved models (folders, run output folders, hub ids) compared on a recipe's
test split, with every model checked before anything is measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from datasets import DatasetDict
from transformers import AutoConfig, AutoTokenizer

from distill import checks, folder_lock, tasks, zero
from distill.config import RecipeConfig
from distill.data import load_raw
from distill.errors import DistillError
from distill.evaluation import Entry, evaluate_models
from distill.metrics import load_metric
from distill.modeling import check_same_tokenizer, freeze, load_pretrained, resolve_path
from distill.report import console_summary, write_report
from distill.run_folder import BASELINE_DIR, STUDENT_DIR, TEACHER_DIR

REMEDY = "write the report elsewhere with --out"


def evaluate_saved(
    cfg: RecipeConfig,
    *,
    teacher: str | None = None,
    students: list[str] = (),
    baselines: list[str] = (),
    out: str | None = None,
) -> dict[str, Any]:
    """``distill evaluate``: saved models (folders, output folders or hub ids) on the recipe's test split.

    Defaults come from the recipe's output folder: its teacher, student and baseline. Every model is
    checked (a model folder, the teacher's tokenizer, the same labels) before anything is measured.
    """
    task = tasks.TASKS[cfg.task]
    checks.quantized_on_cpu(cfg)
    run_dir = Path(cfg.output.dir)
    report_dir = Path(out) if out else run_dir
    # The report goes into a folder no live run is writing (checked now, and held while writing).
    folder_lock.refuse_if_held(report_dir, REMEDY)
    if teacher is None:
        saved = run_dir / TEACHER_DIR
        teacher = str(saved) if (saved / "config.json").is_file() else cfg.teacher.name_or_path
    if not teacher:
        raise DistillError("no teacher: pass --teacher, or set teacher.name_or_path in the recipe")
    students, baselines = list(students), list(baselines)
    if not students and not baselines:
        students = [str(run_dir / STUDENT_DIR)] if (run_dir / STUDENT_DIR).is_dir() else []
        baselines = [str(run_dir / BASELINE_DIR)] if (run_dir / BASELINE_DIR).is_dir() else []
    if not students and not baselines:
        raise DistillError(
            f"nothing to compare: pass --student PATH, or run the recipe first (no {run_dir / STUDENT_DIR})"
        )

    teacher_path = model_folder(teacher, "teacher")
    teacher_config = load_pretrained(AutoConfig.from_pretrained, teacher_path, "teacher")
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, teacher_path, "teacher tokenizer")
    models: list[tuple[str, str, str]] = []  # name, role, path
    for role, paths in (("student", students), ("baseline", baselines)):
        for name, path in zip(names_for(role, paths), paths, strict=True):
            folder = model_folder(path, role)
            what = f"{role} '{path}'"
            config = load_pretrained(AutoConfig.from_pretrained, folder, role)
            task.check_compatible(teacher_config, config, what)
            try:
                check_same_tokenizer(
                    tokenizer, load_pretrained(AutoTokenizer.from_pretrained, folder, f"{role} tokenizer")
                )
            except DistillError as e:
                raise DistillError(f"{what}: {e}") from None
            models.append((name, role, folder))
    raw = load_raw(cfg.data, task.columns(cfg.data))
    splits, _ = task.prepare_targets(raw, cfg.data, teacher_config, True)
    split = "test" if "test" in splits else "validation"
    for name in cfg.eval.metrics:
        load_metric(name)

    # Measured in the precision the models were trained in (the recipe's, else the launcher's).
    accelerator = Accelerator(cpu=checks.cpu_processes(), mixed_precision=checks.mixed_precision(cfg))
    zero.load_models_whole(accelerator)
    entries = [
        Entry(
            "teacher",
            "teacher",
            freeze(_load_trained(task, teacher_path, "teacher"), cfg.teacher.dtype),
            teacher_path,
        )
    ]
    for name, role, folder in models:
        entries.append(Entry(name, role, _load_trained(task, folder, role), folder))
    for e in entries:
        e.model.to(accelerator.device)
    with accelerator.main_process_first():
        tokenized = task.tokenize(DatasetDict({split: splits[split]}), tokenizer, cfg.data)
    report = evaluate_models(
        accelerator,
        task,
        entries,
        tokenized[split],
        task.collator(tokenizer, teacher_config),
        tokenizer,
        cfg.eval,
        split=split,
        extra={"recipe": cfg.description},
    )
    if accelerator.is_main_process:
        lock = folder_lock.FolderLock(report_dir, REMEDY)
        lock.claim()
        try:
            write_report(report, report_dir)
        finally:
            lock.release()
        print(console_summary(report))
    return report


def _load_trained(task: Any, path: str, role: str) -> Any:
    """The model in eval mode; refused if any of its weights would be freshly initialised (a
    backbone without the task's head, say), which would make its scores meaningless."""
    model, info = load_pretrained(task.MODEL_CLASS.from_pretrained, path, role, output_loading_info=True)
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise DistillError(
            f"{role} '{path}' lacks trained weights for this task ({missing}); nothing to evaluate"
        )
    return model.eval()


def model_folder(name_or_path: str, role: str) -> str:
    """A model folder, the model inside a run's output folder, or a hub id (returned as given)."""
    path = Path(resolve_path(name_or_path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        inner = TEACHER_DIR if role == "teacher" else (BASELINE_DIR if role == "baseline" else STUDENT_DIR)
        if (path / inner / "config.json").is_file():
            return str(path / inner)
        raise DistillError(f"{role} '{name_or_path}' is not a model folder (no config.json in it)")
    if path.exists():
        raise DistillError(f"{role} '{name_or_path}' is a file, not a model folder")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise DistillError(f"{role} '{name_or_path}': no such folder")
    return name_or_path  # a hub id: load_pretrained explains what goes wrong


def names_for(role: str, paths: list[str]) -> list[str]:
    """``student`` for one; else each folder's own name (its parent's for a run's student/ folder),
    with ``-baseline`` added for baselines."""
    if len(paths) == 1:
        return [role]
    names: list[str] = []
    for p in paths:
        path = Path(p.rstrip("/"))
        base = path.parent.name if path.name in (STUDENT_DIR, BASELINE_DIR, TEACHER_DIR) else path.name
        if role != "student" and role not in base:
            base = f"{base}-{role}"  # a run's student and baseline share their folder's name
        name, i = base or role, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names
