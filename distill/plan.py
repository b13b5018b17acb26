"""A run's plan: every check of ``distill validate``, made before anything is written.

:func:`prepare` reads the recipe's teacher, data, labels and tokenizers, checks them against each
other, loads the teacher and runs it and a trial student once on the longest inputs the recipe
allows. ``distill run`` starts from the same plan, so whatever it would fail on is refused first.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from accelerate.utils import set_seed
from datasets import DatasetDict
from transformers import AutoConfig, AutoTokenizer

from distill import checks, hub, lora, memory, tasks, teacher_store
from distill.artefacts import is_model_folder, read_record
from distill.config import FinetuneConfig, RecipeConfig, check_against_teacher, to_dict
from distill.data import load_raw
from distill.errors import DistillError
from distill.metrics import load_metric
from distill.modeling import (
    build_student,
    check_same_tokenizer,
    encoder_decoder_depths,
    load_pretrained,
    num_layers,
    placement,
    student_config,
)
from distill.pruning import size_from
from distill.run_folder import STORE_DIR, TEACHER_DIR
from distill.teachers import new_teacher_config, stage_settings, store_settings

log = logging.getLogger(__name__)

FINETUNE_MARKER = (
    "distill_finetune.json"  # inside TEACHER_DIR, renamed into place with it: the stage is complete
)


@dataclass
class Plan:
    """Everything known once the recipe, data, labels, tokenizers and models have been checked."""

    cfg: RecipeConfig
    task: ModuleType
    splits: DatasetDict  # raw text + integer "labels"
    label_names: list[str]
    tokenizer: Any
    teacher_config: Any
    reuse_teacher: bool  # a fine-tuned teacher from an earlier run is in the output folder
    processes: int = 1
    teacher: torch.nn.Module | None = None  # loaded (or built) and run once on the longest inputs


def prepare(cfg: RecipeConfig, processes: int | None = None) -> Plan:
    """All checks of ``distill validate``, in the order a run needs them: the output folder, the
    config against the teacher, data, labels, column types, split sizes, tokenizers, and the teacher
    and a trial student on the longest inputs the recipe allows. Writes nothing."""
    cfg = checks.with_precision(cfg)
    checks.launcher_settings(cfg)
    checks.quantized_on_cpu(cfg)
    checks.trackers_installed(cfg)
    task = tasks.TASKS[cfg.task]
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    checks.output_dir(cfg.output.dir)
    hub.check_ready(cfg.output.push_to_hub)
    if cfg.teacher.device_map and processes > 1:
        raise DistillError(
            f"teacher.device_map: a teacher placed across devices serves one process, and {processes} were "
            "launched; run one process (it uses every device the placement names)"
        )
    out = Path(cfg.output.dir)
    finetuned = out / TEACHER_DIR
    marker = read_record(finetuned / FINETUNE_MARKER) if cfg.teacher.stage.enabled else None
    reuse = marker is not None and is_model_folder(finetuned)
    if reuse:
        recorded = marker.get("settings")
        if isinstance(recorded, dict):
            # Teachers saved before the precision was recorded were trained in float32: a bf16
            # stage could not finish then (its reload check failed before the marker was written).
            # A stage setting added since (say, group_by_length) had its default then.
            stage = "train" if cfg.teacher.architecture else "finetune"
            added = {f"teacher.{stage}.{k}": v for k, v in to_dict(FinetuneConfig()).items()}
            recorded = {**added, "train.mixed_precision": "no", **recorded}
        current = stage_settings(cfg)
        if recorded != current:
            recorded = recorded if isinstance(recorded, dict) else {}
            changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
            given = [
                k
                for k in changed
                if memory.is_reference(recorded.get(k)) or memory.is_reference(current.get(k))
            ]
            if given:
                raise DistillError(
                    f"{finetuned} was trained with another {', '.join(given)} passed from Python (its "
                    "fingerprint differs: other weights or content); pass the same objects, or choose "
                    "another output.dir"
                )
            raise DistillError(
                f"{finetuned} was trained with other settings ({', '.join(changed)} changed); "
                "choose another output.dir or delete that folder"
            )
    # The teacher first (a bad id fails fast); a teacher built from scratch needs the data first.
    source = str(finetuned) if reuse else cfg.teacher.name_or_path
    if source:
        teacher_config = load_pretrained(AutoConfig.from_pretrained, source, "teacher")
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "teacher tokenizer")
        checks.tokenizer_ready(tokenizer)
        if not reuse and not cfg.teacher.stage.enabled:  # its trained head is used as it is
            checks.head_kind(teacher_config, task.MODEL_CLASS, source)
    raw = load_raw(cfg.data, task.columns(cfg.data))
    checks.text_columns(raw, task.columns(cfg.data), "label_column")
    if not source:
        tokenizer, teacher_config = new_teacher_config(cfg, raw, task)

    n_teacher = num_layers(teacher_config)
    n_student = _student_depth(cfg, teacher_config)
    depths = (
        encoder_decoder_depths(teacher_config)
        if getattr(teacher_config, "is_encoder_decoder", False)
        else None
    )
    check_against_teacher(cfg, n_teacher, n_student, depths)

    head_trained = reuse or not cfg.teacher.stage.enabled
    splits, label_names = task.prepare_targets(raw, cfg.data, teacher_config, head_trained)
    checks.split_sizes(cfg, splits, processes)
    if "test" not in splits:
        log.warning("no test split: the final report compares teacher and student on the validation split")

    for name in cfg.eval.metrics:
        load_metric(name)  # a metric that cannot be loaded fails now, not after training
    if cfg.student.init == "pretrained":
        student_tok = load_pretrained(
            AutoTokenizer.from_pretrained, cfg.student.name_or_path, "student tokenizer"
        )
        checks.tokenizer_ready(student_tok, "student")
        check_same_tokenizer(tokenizer, student_tok)
    if cfg.teacher.cache:  # a store of other settings is refused now, not after the teacher's stage
        teacher_store.check_settings(store_folder(cfg), store_settings(cfg))
    plan = Plan(cfg, task, splits, label_names, tokenizer, teacher_config, reuse, processes)
    # A new task head is initialised while loading a teacher that is fine-tuned here.
    set_seed(cfg.teacher.stage.seed if cfg.teacher.stage.enabled else cfg.train.seed)
    plan.teacher = load_teacher(plan)
    checks.embeddings_cover(plan.teacher, tokenizer, "teacher")
    checks.pad_in_config(plan.teacher, tokenizer)
    trial, _ = build_student(cfg.student, plan.teacher, task.MODEL_CLASS, task.model_kwargs(label_names))
    checks.pad_in_config(trial, tokenizer)
    checks.models_take_the_longest_inputs(
        cfg, task, splits, tokenizer, {"teacher": plan.teacher, "student": trial}
    )
    checks.loss_terms_hold(cfg, task, splits, tokenizer, plan.teacher, trial)
    if cfg.student.lora.enabled:  # modules to adapt that the student lacks are refused now
        lora.wrap(trial, cfg.student.lora, cfg.task)
    return plan


def load_teacher(plan: Plan) -> torch.nn.Module:
    cfg, task = plan.cfg, plan.task
    if plan.reuse_teacher:
        return load_pretrained(
            task.MODEL_CLASS.from_pretrained, str(Path(cfg.output.dir) / TEACHER_DIR), "teacher"
        )
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
        task.MODEL_CLASS.from_pretrained,
        cfg.teacher.name_or_path,
        "teacher",
        output_loading_info=True,
        **placement(cfg.teacher),
    )
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise DistillError(
            f"the teacher '{cfg.teacher.name_or_path}' has no trained task head (missing weights: {missing}); "
            "set teacher.finetune.enabled=true to fine-tune it first"
        )
    set_labels(teacher, plan.label_names)
    return teacher


def _student_depth(cfg: RecipeConfig, teacher_config: Any) -> int:
    s = cfg.student
    if s.init == "copy_layers":
        return len(s.layers) if isinstance(s.layers, list) else s.num_layers
    if s.init == "prune":
        depth = (
            encoder_decoder_depths(teacher_config)[1]
            if getattr(teacher_config, "is_encoder_decoder", False)
            else num_layers(teacher_config)
        )
        return size_from(s.prune.layers, depth, "student.prune.layers")
    if s.init == "from_config":
        return num_layers(student_config(teacher_config, s.config_overrides))
    config = load_pretrained(AutoConfig.from_pretrained, s.name_or_path, "student")
    return num_layers(config)


def set_labels(model: torch.nn.Module, names: list[str] | None) -> None:
    if names is None:  # tasks without labels (translation)
        return
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}


def store_folder(cfg: RecipeConfig) -> Path:
    """Where ``teacher.cache`` keeps the teacher's outputs."""
    return Path(cfg.teacher.cache_dir) if cfg.teacher.cache_dir else Path(cfg.output.dir) / STORE_DIR
