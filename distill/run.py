"""A recipe from start to finish: check everything, fine-tune the teacher if asked, distil, report.

Nothing is written before every check that can fail on the user's input has passed, so bad input
never leaves a half-written output folder.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from datasets import DatasetDict, concatenate_datasets
from transformers import AutoConfig, AutoTokenizer

from distill import tasks
from distill.config import RecipeConfig, TrainConfig, check_against_teacher, dump_yaml, to_dict
from distill.data import load_raw
from distill.errors import DistillError
from distill.evaluation import Entry, evaluate_models
from distill.loop import LossStep, latest_checkpoint, train
from distill.metrics import load_metric
from distill.modeling import (
    HiddenProjection,
    build_student,
    check_same_tokenizer,
    default_layer_map,
    encoder_decoder_depths,
    freeze,
    hidden_size,
    load_pretrained,
    num_layers,
    resolve_path,
)
from distill.report import REPORT_FILES, console_summary, model_card, write_report
from distill.seqkd import pseudo_targets
from distill.teachers import new_teacher_config, pseudo_settings, stage_settings

log = logging.getLogger(__name__)

TEACHER_DIR = "teacher"  # the fine-tuned teacher, when the recipe fine-tunes one
STUDENT_DIR = "student"  # the final student: save_pretrained + tokenizer
BASELINE_DIR = "baseline"  # train.baseline: the same student trained without the teacher
STAGES_DIR = "stages"  # per-stage checkpoints
PSEUDO_DIR = "pseudo_targets"  # sequence-level KD: the teacher's outputs for the training sources
FINETUNE_MARKER = "distill_finetune.json"  # written last into TEACHER_DIR: the stage is complete


@dataclass
class Plan:
    """Everything known once the recipe, data, labels and tokenizers have been checked."""

    cfg: RecipeConfig
    task: ModuleType
    splits: DatasetDict  # raw text + integer "labels"
    label_names: list[str]
    tokenizer: Any
    teacher_config: Any
    reuse_teacher: bool  # a fine-tuned teacher from an earlier run is in the output folder


def prepare(cfg: RecipeConfig) -> Plan:
    """All checks of ``distill validate``: config against the teacher, data, labels, tokenizers."""
    task = tasks.TASKS[cfg.task]
    out = Path(cfg.output.dir)
    finetuned = out / TEACHER_DIR
    reuse = cfg.teacher.stage.enabled and (finetuned / FINETUNE_MARKER).is_file()
    if reuse:
        recorded = json.loads((finetuned / FINETUNE_MARKER).read_text())["settings"]
        current = stage_settings(cfg)
        if recorded != current:
            changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
            raise DistillError(
                f"{finetuned} was trained with other settings ({', '.join(changed)} changed); "
                "choose another output.dir or delete that folder"
            )
    # The teacher first (a bad id fails fast); a teacher built from scratch needs the data first.
    source = str(finetuned) if reuse else cfg.teacher.name_or_path
    if source:
        teacher_config = load_pretrained(AutoConfig.from_pretrained, source, "teacher")
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "teacher tokenizer")
    raw = load_raw(cfg.data, task.columns(cfg.data))
    if not source:
        tokenizer, teacher_config = new_teacher_config(cfg, raw, task)

    n_teacher = num_layers(teacher_config)
    n_student = _student_depth(cfg, n_teacher)
    depths = (
        encoder_decoder_depths(teacher_config)
        if getattr(teacher_config, "is_encoder_decoder", False)
        else None
    )
    check_against_teacher(cfg, n_teacher, n_student, depths)
    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise DistillError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on a CPU")

    head_trained = reuse or not cfg.teacher.stage.enabled
    splits, label_names = task.prepare_targets(raw, cfg.data, teacher_config, head_trained)
    if "test" not in splits:
        log.warning("no test split: the final report compares teacher and student on the validation split")

    for name in cfg.eval.metrics:
        load_metric(name)  # a metric that cannot be loaded fails now, not after training
    if cfg.student.init == "pretrained":
        student_tok = load_pretrained(
            AutoTokenizer.from_pretrained, cfg.student.name_or_path, "student tokenizer"
        )
        check_same_tokenizer(tokenizer, student_tok)
    return Plan(cfg, task, splits, label_names, tokenizer, teacher_config, reuse)


def run(cfg: RecipeConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run the recipe; returns what is written to ``OUTPUT/results.json``."""
    accelerator = Accelerator(
        cpu=_cpu_processes(),
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard",
        project_dir=cfg.output.dir,
        # Each stage's data order follows the seed set just before it (torch's initial seed).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    with accelerator.main_process_first():
        plan = prepare(cfg)
    task, out = plan.task, Path(cfg.output.dir)
    # A new task head is initialised while loading a teacher that is fine-tuned here.
    set_seed(cfg.teacher.stage.seed if cfg.teacher.stage.enabled else cfg.train.seed)
    teacher = _load_teacher(plan)
    _check_output_folder(out, resume=resume, overwrite=cfg.output.overwrite)

    # --- from here on, the output folder is written ---
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.output.overwrite:
            for name in (
                STUDENT_DIR,
                BASELINE_DIR,
                f"{STAGES_DIR}/distill",
                f"{STAGES_DIR}/baseline",
                "results.json",
                *REPORT_FILES,
            ):
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    accelerator.wait_for_everyone()
    accelerator.init_trackers("logs", config=_flat(to_dict(cfg)))

    with accelerator.main_process_first():
        tokenized = task.tokenize(plan.splits, plan.tokenizer, cfg.data)
    collate = task.collator(plan.tokenizer, teacher.config)
    eval_split = tokenized["validation"]

    if cfg.teacher.stage.enabled and not plan.reuse_teacher:
        teacher = _finetune_teacher(accelerator, plan, teacher, tokenized, collate, resume)

    set_seed(cfg.train.seed)
    # The student is built from the fp32 teacher, before the teacher is cast to teacher.dtype.
    student, copied = build_student(
        cfg.student, teacher, task.MODEL_CLASS, task.model_kwargs(plan.label_names)
    )
    _set_labels(student, plan.label_names)
    baseline_init = copy.deepcopy(student) if cfg.train.baseline else None
    teacher = freeze(teacher, cfg.teacher.dtype).to(accelerator.device)
    projection = None
    if cfg.loss.hidden_weight > 0:
        layer_map = cfg.loss.layer_map or default_layer_map(
            num_layers(student.config), num_layers(teacher.config), copied
        )
        projection = HiddenProjection(layer_map, hidden_size(student.config), hidden_size(teacher.config))
    loss_step = LossStep(task, cfg.loss, teacher=teacher, projection=projection)
    train_split = tokenized["train"]
    if cfg.loss.sequence_kd:
        pseudo = pseudo_targets(
            accelerator,
            teacher,
            train_split,
            collate,
            out / PSEUDO_DIR,
            settings=pseudo_settings(cfg),
            batch_size=cfg.eval.batch_size,
        )
        train_split = (
            pseudo if cfg.loss.sequence_kd == "replace" else concatenate_datasets([train_split, pseudo])
        )
    set_seed(cfg.train.seed)  # the baseline's training starts from this same state
    student, result = train(
        accelerator,
        name="distill",
        cfg=cfg.train,
        student=student,
        loss_step=loss_step,
        train_dataset=train_split,
        eval_dataset=eval_split,
        collate=collate,
        task=task,
        stage_dir=out / STAGES_DIR / "distill",
        eval_batch_size=cfg.eval.batch_size,
        resume=resume,
        tokenizer=plan.tokenizer,
        eval_settings=cfg.eval,
    )
    student = accelerator.unwrap_model(student)
    save_model(accelerator, student, plan.tokenizer, out / STUDENT_DIR)

    entries = [
        Entry("teacher", "teacher", teacher, _teacher_source(cfg)),
        Entry("student", "student", student, str(out / STUDENT_DIR)),
    ]
    results: dict[str, Any] = {
        "task": cfg.task,
        "processes": accelerator.num_processes,
        "labels": plan.label_names,
        "student_layers_from_teacher": copied,
        "train_examples": len(train_split),
        "student_validation": result.metrics,
        "history": result.history,
    }
    if baseline_init is not None:
        # The same student, data order, steps and seed; the loss is the cross-entropy alone.
        set_seed(cfg.train.seed)
        baseline, baseline_result = train(
            accelerator,
            name="baseline",
            cfg=cfg.train,
            student=baseline_init,
            loss_step=LossStep(task),
            train_dataset=tokenized["train"],
            eval_dataset=eval_split,
            collate=collate,
            task=task,
            stage_dir=out / STAGES_DIR / "baseline",
            eval_batch_size=cfg.eval.batch_size,
            resume=resume,
            tokenizer=plan.tokenizer,
            eval_settings=cfg.eval,
        )
        baseline = accelerator.unwrap_model(baseline)
        save_model(accelerator, baseline, plan.tokenizer, out / BASELINE_DIR)
        entries.append(Entry("baseline", "baseline", baseline, str(out / BASELINE_DIR)))
        results["baseline_validation"] = baseline_result.metrics
        results["baseline_history"] = baseline_result.history

    split = "test" if "test" in tokenized else "validation"
    report = evaluate_models(
        accelerator,
        task,
        entries,
        tokenized[split],
        collate,
        plan.tokenizer,
        cfg.eval,
        split=split,
        extra={"recipe": cfg.description},
    )
    if accelerator.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        write_report(report, out)
        for entry in entries[1:]:
            card = model_card(
                report,
                entry.name,
                how_made=how_made(cfg, entry.role, copied, len(train_split), accelerator.num_processes),
                pipeline_tag=task.PIPELINE_TAG,
                base_model=_hub_id(cfg.teacher.name_or_path),
                usage=task.usage_snippet(str(out / entry.name)),
            )
            (out / entry.name / "README.md").write_text(card, encoding="utf-8")
        print(console_summary(report))
    results["report"] = report
    accelerator.end_training()
    return results


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` model and tokenizer into ``path``, appearing there only once complete."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial = path.with_name(f".partial_{path.name}")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, save_function=accelerator.save)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
    accelerator.wait_for_everyone()


def _load_teacher(plan: Plan) -> torch.nn.Module:
    cfg, task = plan.cfg, plan.task
    if plan.reuse_teacher:
        return task.MODEL_CLASS.from_pretrained(Path(cfg.output.dir) / TEACHER_DIR)
    if cfg.teacher.architecture:
        return task.MODEL_CLASS.from_config(plan.teacher_config)
    if cfg.teacher.finetune.enabled:
        return load_pretrained(
            task.MODEL_CLASS.from_pretrained,
            cfg.teacher.name_or_path,
            "teacher",
            ignore_mismatched_sizes=True,
            **task.model_kwargs(plan.label_names),
        )
    teacher, info = load_pretrained(
        task.MODEL_CLASS.from_pretrained, cfg.teacher.name_or_path, "teacher", output_loading_info=True
    )
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise DistillError(
            f"the teacher '{cfg.teacher.name_or_path}' has no trained task head (missing weights: {missing}); "
            "set teacher.finetune.enabled=true to fine-tune it first"
        )
    _set_labels(teacher, plan.label_names)
    return teacher


def _finetune_teacher(
    accelerator: Accelerator,
    plan: Plan,
    teacher: torch.nn.Module,
    tokenized: DatasetDict,
    collate: Any,
    resume: bool,
) -> torch.nn.Module:
    cfg = plan.cfg
    ft = cfg.teacher.stage
    name = "teacher-train" if cfg.teacher.architecture else "teacher-finetune"
    out = Path(cfg.output.dir)
    stage_cfg = TrainConfig(
        steps=ft.steps,
        batch_size=ft.batch_size,
        learning_rate=ft.learning_rate,
        weight_decay=ft.weight_decay,
        warmup_ratio=ft.warmup_ratio,
        max_grad_norm=cfg.train.max_grad_norm,
        mixed_precision=cfg.train.mixed_precision,
        seed=ft.seed,
        eval_every=ft.eval_every,
        checkpoint_every=cfg.train.checkpoint_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        log_every=cfg.train.log_every,
    )
    set_seed(ft.seed)
    model, result = train(
        accelerator,
        name=name,
        cfg=stage_cfg,
        student=teacher,
        loss_step=LossStep(plan.task),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        collate=collate,
        task=plan.task,
        stage_dir=out / STAGES_DIR / name.replace("-", "_"),
        eval_batch_size=cfg.eval.batch_size,
        resume=resume,
        tokenizer=plan.tokenizer,
        eval_settings=cfg.eval,
    )
    teacher = accelerator.unwrap_model(model)
    save_model(accelerator, teacher, plan.tokenizer, out / TEACHER_DIR)
    if accelerator.is_main_process:
        marker = {"settings": stage_settings(cfg), "validation": result.metrics}
        (out / TEACHER_DIR / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(out / STAGES_DIR / name.replace("-", "_"), ignore_errors=True)
    accelerator.free_memory()
    return teacher


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
    run_dir = Path(cfg.output.dir)
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
        for name, path in zip(_names(role, paths), paths, strict=True):
            folder = model_folder(path, role)
            what = f"{role} '{path}'"
            config = load_pretrained(AutoConfig.from_pretrained, folder, what)
            task.check_compatible(teacher_config, config, what)
            try:
                check_same_tokenizer(tokenizer, load_pretrained(AutoTokenizer.from_pretrained, folder, what))
            except DistillError as e:
                raise DistillError(f"{what}: {e}") from None
            models.append((name, role, folder))
    raw = load_raw(cfg.data, task.columns(cfg.data))
    splits, _ = task.prepare_targets(raw, cfg.data, teacher_config, True)
    split = "test" if "test" in splits else "validation"
    for name in cfg.eval.metrics:
        load_metric(name)

    accelerator = Accelerator(cpu=_cpu_processes())
    entries = [
        Entry(
            "teacher",
            "teacher",
            freeze(task.MODEL_CLASS.from_pretrained(teacher_path), cfg.teacher.dtype),
            teacher_path,
        )
    ]
    for name, role, folder in models:
        model = load_pretrained(task.MODEL_CLASS.from_pretrained, folder, f"{role} '{folder}'")
        entries.append(Entry(name, role, model.eval(), folder))
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
        write_report(report, Path(out) if out else run_dir)
        print(console_summary(report))
    return report


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


def _names(role: str, paths: list[str]) -> list[str]:
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


def _teacher_source(cfg: RecipeConfig) -> str:
    if cfg.teacher.stage.enabled:
        return str(Path(cfg.output.dir) / TEACHER_DIR)
    return cfg.teacher.name_or_path


def _hub_id(name_or_path: str) -> str | None:
    """The teacher's hub id for a model card's ``base_model`` (None for local or packaged folders)."""
    if not name_or_path or name_or_path.startswith("pkg:") or Path(name_or_path).exists():
        return None
    return name_or_path


def how_made(
    cfg: RecipeConfig, role: str, copied: list[int] | None, train_examples: int, processes: int
) -> list[tuple[str, str]]:
    """The model card's "how it was made" rows, from the resolved recipe."""
    t, s, loss, tr = cfg.teacher, cfg.student, cfg.loss, cfg.train
    if t.architecture:
        teacher = f"trained here from scratch ({t.architecture.get('model_type')}, {t.train.steps} steps)"
    else:
        teacher = f"`{t.name_or_path}`" + (
            f", fine-tuned here for {t.finetune.steps} steps" if t.finetune.enabled else ""
        )
    if s.init == "copy_layers" and cfg.task == "translation":
        encoder = f"encoder layers {s.encoder_layers}" if s.encoder_layers is not None else "whole encoder"
        init = f"copied from the teacher: embeddings, head, {encoder} and decoder layers {copied}"
    elif s.init == "copy_layers":
        init = f"copied from the teacher: embeddings, head and layers {copied}"
    elif s.init == "from_config":
        init = f"random, the teacher's config with {s.config_overrides}"
    else:
        init = f"pretrained `{s.name_or_path}`"
    if role == "baseline":
        signal = "cross-entropy on the hard labels only, no teacher (the baseline)"
    elif loss.alpha > 0:
        signal = f"{loss.alpha:g} · T²·{loss.soft}(teacher ‖ student) at T = {loss.temperature:g}" + (
            f" + {1 - loss.alpha:g} · cross-entropy" if loss.alpha < 1 else ""
        )
    else:
        signal = "cross-entropy"
    if role != "baseline" and loss.hidden_weight > 0:
        signal += f" + {loss.hidden_weight:g} · hidden-state {loss.hidden}"
    if role != "baseline" and loss.sequence_kd:
        signal += f"; targets: teacher beam-{loss.sequence_kd_beams} outputs ({loss.sequence_kd})"
    data = cfg.data.dataset or cfg.data.synthetic or ", ".join(f"{k}: {v}" for k, v in cfg.data.files.items())
    return [
        ("Teacher", teacher),
        ("Recipe", cfg.description or "(no description)"),
        ("Initialisation", init),
        ("Training signal", signal),
        ("Data", f"{data}; {train_examples} training examples"),
        (
            "Budget",
            f"{tr.steps} steps x {tr.batch_size} examples x {tr.gradient_accumulation_steps} accumulation "
            f"x {processes} processes, learning rate {tr.learning_rate:g}, seed {tr.seed}",
        ),
    ]


def _check_output_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    if overwrite:
        return
    if (out / STUDENT_DIR).exists():
        raise DistillError(
            f"{out} already holds a finished student; set output.overwrite=true to replace it, or choose another output.dir"
        )
    if latest_checkpoint(out / STAGES_DIR / "distill") is not None and not resume:
        raise DistillError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it, "
            "or output.overwrite=true to start afresh"
        )


def _cpu_processes() -> bool:
    """Several processes (torchrun, accelerate launch) on a machine without GPUs: gloo on CPU.

    Accelerate only treats a launched process as one of several CPU processes when told to use
    the CPU; otherwise each would train alone on the whole data.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (
        world > 1
        and not torch.cuda.is_available()
        and not (hasattr(torch, "xpu") and torch.xpu.is_available())
    )


def _student_depth(cfg: RecipeConfig, n_teacher: int) -> int:
    s = cfg.student
    if s.init == "copy_layers":
        return len(s.layers) if s.layers is not None else s.num_layers
    if s.init == "from_config":
        return int(s.config_overrides.get("num_hidden_layers", n_teacher))
    config = load_pretrained(AutoConfig.from_pretrained, s.name_or_path, "student")
    return num_layers(config)


def _set_labels(model: torch.nn.Module, names: list[str] | None) -> None:
    if names is None:  # tasks without labels (translation)
        return
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def quiet_libraries() -> None:
    """Keep the console to distill's own progress: library load reports and hub chatter off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
