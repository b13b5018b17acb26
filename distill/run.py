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
from distill.cards import how_made, hub_id, model_card
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
)
from distill.report import REPORT_FILES, console_summary, write_report
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
    references = tokenized["train"]  # what the student and the baseline see of the targets
    if cfg.data.reference_examples:
        references = references.select(range(min(cfg.data.reference_examples, len(references))))
    train_split = references
    if cfg.loss.sequence_kd:
        pseudo = pseudo_targets(
            accelerator,
            teacher,
            tokenized["train"],  # every training source, with or without a reference
            collate,
            out / PSEUDO_DIR,
            settings=pseudo_settings(cfg),
            batch_size=cfg.eval.batch_size,
        )
        train_split = (
            pseudo if cfg.loss.sequence_kd == "replace" else concatenate_datasets([train_split, pseudo])
        )

    def train_student(name: str, model: torch.nn.Module, step: LossStep, dataset: Any, folder: str):
        """One student stage (distill, baseline) from the same seeded state; saved to OUTPUT/folder."""
        model, stage = _train_stage(
            accelerator, plan, name, cfg.train, model, step, dataset, eval_split, collate, resume
        )
        save_model(accelerator, model, plan.tokenizer, out / folder)
        return model, stage

    student, result = train_student("distill", student, loss_step, train_split, STUDENT_DIR)

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
        # The same student, data order, steps and seed; the references and cross-entropy alone.
        baseline, baseline_result = train_student(
            "baseline", baseline_init, LossStep(task), references, BASELINE_DIR
        )
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
            seen = len(train_split) if entry.role == "student" else len(references)
            card = model_card(
                report,
                entry.name,
                how_made=how_made(cfg, entry.role, copied, seen, accelerator.num_processes),
                pipeline_tag=task.PIPELINE_TAG,
                base_model=hub_id(cfg.teacher.name_or_path),
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
    teacher, result = _train_stage(
        accelerator,
        plan,
        name,
        stage_cfg,
        teacher,
        LossStep(plan.task),
        tokenized["train"],
        tokenized["validation"],
        collate,
        resume,
        stage_dir=name.replace("-", "_"),
    )
    save_model(accelerator, teacher, plan.tokenizer, out / TEACHER_DIR)
    if accelerator.is_main_process:
        marker = {"settings": stage_settings(cfg), "validation": result.metrics}
        (out / TEACHER_DIR / FINETUNE_MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(out / STAGES_DIR / name.replace("-", "_"), ignore_errors=True)
    accelerator.free_memory()
    return teacher


def _train_stage(
    accelerator: Accelerator,
    plan: Plan,
    name: str,
    stage_cfg: TrainConfig,
    model: torch.nn.Module,
    loss_step: LossStep,
    dataset: Any,
    eval_dataset: Any,
    collate: Any,
    resume: bool,
    stage_dir: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Train ``model`` as one stage, from the state ``stage_cfg.seed`` gives; returns it unwrapped."""
    cfg = plan.cfg
    set_seed(stage_cfg.seed)
    model, result = train(
        accelerator,
        name=name,
        cfg=stage_cfg,
        student=model,
        loss_step=loss_step,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        collate=collate,
        task=plan.task,
        stage_dir=Path(cfg.output.dir) / STAGES_DIR / (stage_dir or name),
        eval_batch_size=cfg.eval.batch_size,
        resume=resume,
        tokenizer=plan.tokenizer,
        eval_settings=cfg.eval,
    )
    return accelerator.unwrap_model(model), result


def _teacher_source(cfg: RecipeConfig) -> str:
    if cfg.teacher.stage.enabled:
        return str(Path(cfg.output.dir) / TEACHER_DIR)
    return cfg.teacher.name_or_path


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
