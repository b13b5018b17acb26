"""A recipe from start to finish: check everything, fine-tune the teacher if asked, distil, report.

Nothing is written before every check that can fail on the user's input has passed, so bad input
never leaves a half-written output folder. The run is a list of stages (teacher training, teacher
outputs, student, baseline, report), each ending with a completion record written last; with
``--resume`` finished stages are read back and an unfinished one continues from its latest intact
checkpoint, so an interrupted run finishes with the weights and report of an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from datasets import DatasetDict, concatenate_datasets

from distill import atomic, checks, folder_lock, hub, lora, memory, pruning, run_folder, teacher_store, zero
from distill.artefacts import (
    RECORD,
    is_model_folder,
    read_record,
    reload,
    ship,
    write_record,
)
from distill.callbacks import Callback, CallbackList
from distill.cards import data_name, dataset_id, describe_built, how_made, hub_id, model_card, teacher_license
from distill.config import RecipeConfig, TrainConfig, to_dict
from distill.errors import DistillError
from distill.evaluation import Entry, evaluate_models
from distill.folder_lock import FolderLock
from distill.loop import StageData, TrainResult, train
from distill.loss_step import LossStep
from distill.modeling import (
    HiddenProjection,
    build_student,
    count_parameters,
    default_layer_map,
    dispatched,
    freeze,
    hidden_size,
    num_layers,
    padded_rows,
    place,
    shard_for_inference,
    suppress_in_generation,
    suppressing,
)
from distill.plan import FINETUNE_MARKER, Plan, load_teacher, prepare, set_labels, store_folder
from distill.report import REPORT_FILES, console_summary, write_report
from distill.run_folder import (
    BASELINE_DIR,
    PSEUDO_DIR,
    RUN_RECORD,
    STAGES_DIR,
    STUDENT_DIR,
    TEACHER_DIR,
)
from distill.seqkd import pseudo_targets
from distill.teachers import pseudo_settings, stage_settings, store_settings

log = logging.getLogger(__name__)


def run(cfg: RecipeConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the recipe; returns what is written to ``OUTPUT/results.json``, and the report."""
    # The precision the run trains and is measured in, recorded in config.yaml as resolved: a
    # resume under another launcher setting is refused as a changed setting.
    cfg = checks.with_precision(cfg)
    checks.launcher_settings(cfg)  # before the Accelerator: a refused launcher never starts
    accelerator = Accelerator(
        cpu=checks.cpu_processes(),
        mixed_precision=cfg.train.mixed_precision,
        log_with=trackers(cfg) or None,
        project_dir=cfg.output.dir,
        # Each stage's data order follows the seed set just before it (torch's initial seed).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    zero.load_models_whole(accelerator)
    lock = FolderLock(Path(cfg.output.dir))
    try:
        hooks = CallbackList(callbacks, accelerator.is_main_process)
        return _run(accelerator, cfg, resume, lock, hooks)
    finally:
        lock.release()


@dataclasses.dataclass
class RunState:
    """What every stage of one run shares: the launcher, the checked plan, the output folder, the
    tokenized splits and their collator, and how the run was asked for."""

    accelerator: Accelerator
    plan: Plan
    out: Path
    resume: bool
    callbacks: CallbackList
    tokenized: DatasetDict | None = None
    collate: Any = None
    probe: dict[str, torch.Tensor] | None = None  # a validation batch: the reload checks run on it

    @property
    def cfg(self) -> RecipeConfig:
        return self.plan.cfg


@dataclasses.dataclass
class StudentStart:
    """The student as built, before training, and what its building measured and kept."""

    model: torch.nn.Module
    copied: list[int] | None  # the teacher's layers it took (copy_layers, prune)
    built: dict[str, Any]  # what student.init=prune or layers=auto measured and kept
    baseline: torch.nn.Module | None  # the same initial student, for the no-teacher baseline


@dataclasses.dataclass
class TrainingSignal:
    """What the distillation stage trains on: the loss (online teacher or store) and its data."""

    loss_step: LossStep
    train_split: Any  # the student's training examples (references and/or teacher outputs)
    references: Any  # the training examples with references: what the baseline trains on


def _run(
    accelerator: Accelerator, cfg: RecipeConfig, resume: bool, lock: FolderLock, callbacks: CallbackList
) -> dict[str, Any]:
    """The stages, in order: checks, teacher training, student building, teacher outputs,
    student, baseline, report."""
    out = Path(cfg.output.dir)
    checks.output_dir(cfg.output.dir)
    folder_lock.refuse_if_held(out)
    run_folder.check(out, cfg, resume=resume)
    with accelerator.main_process_first():
        plan = prepare(cfg, accelerator.num_processes)
    state = RunState(accelerator, plan, out, resume, callbacks)
    if dispatched(plan.teacher):
        where: dict[str, int] = {}
        for device in plan.teacher.hf_device_map.values():
            where[str(device)] = where.get(str(device), 0) + 1
        parts = ", ".join(f"{n} part{'s' if n > 1 else ''} on {device}" for device, n in where.items())
        accelerator.print(f"teacher: placed by teacher.device_map={cfg.teacher.device_map}: {parts}")

    # --- from here on, the output folder is written ---
    _open(state, lock)
    _tokenize(state)
    teacher = _teacher_stage(state, plan.teacher)
    start = _build_student(state, teacher)
    shard = _shards_teacher(accelerator, cfg)
    teacher = freeze(teacher, cfg.teacher.dtype)
    if not shard or cfg.loss.sequence_kd:  # a sharded teacher goes to the device as it is sharded
        teacher = place(teacher, accelerator.device)  # (sequence-level targets: generated whole first)
    signal = _training_signal(state, teacher, start)
    placed: dict[str, Any] = {}
    if shard:
        placed = _shard_teacher(accelerator, teacher, cfg.teacher.shard)
    student, result = _student_stage(
        state, "distill", start.model, signal.loss_step, signal.train_split, STUDENT_DIR
    )
    if shard:  # the report measures the teacher whole, as its users run it: read back from its folder
        signal.loss_step.teacher = None
        teacher = _plain_teacher(state)
    else:
        place(teacher, accelerator.device)  # for the report (a cached teacher was kept off the device)
    entries = [
        Entry("teacher", "teacher", teacher, _teacher_source(cfg)),
        Entry("student", "student", student, str(out / STUDENT_DIR)),
    ]
    results: dict[str, Any] = {
        "task": cfg.task,
        "processes": accelerator.num_processes,
        "labels": plan.label_names,
        "student_layers_from_teacher": start.copied,
        **({"student_init": start.built} if start.built else {}),
        **({"teacher_sharded": placed} if placed else {}),
        "train_examples": len(signal.train_split),
        "student_validation": result.metrics,
        "history": result.history,
    }
    if start.baseline is not None:
        # The same student, data order, steps and seed; the references and cross-entropy alone.
        baseline, baseline_result = _student_stage(
            state,
            "baseline",
            start.baseline,
            LossStep(plan.task, vocabulary=_vocabulary(plan)),
            signal.references,
            BASELINE_DIR,
        )
        entries.append(Entry("baseline", "baseline", baseline, str(out / BASELINE_DIR)))
        results["baseline_validation"] = baseline_result.metrics
        results["baseline_history"] = baseline_result.history
    report = _report(state, entries, results, start, signal)
    results["report"] = report
    accelerator.end_training()
    return results


def _shards_teacher(accelerator: Accelerator, cfg: RecipeConfig) -> bool:
    """``teacher.shard`` for this launch: auto shards under sharded training (FSDP2, DeepSpeed) over
    several processes when the student stage runs the teacher (not with a store, nor a teacher
    placed by device_map). Either way the teacher is sharded with torch's ``fully_shard``: it is
    no engine's model, so nothing of DeepSpeed's is needed for its forward passes."""
    sharding = bool(getattr(accelerator, "is_fsdp2", False)) or zero.active(accelerator)
    if cfg.teacher.shard is True:
        if not sharding:  # checked before the launch; an Accelerator set up otherwise from Python
            raise DistillError(
                "teacher.shard=true: the teacher is sharded only under FSDP2 or DeepSpeed training"
            )
        return True
    online = not cfg.teacher.cache and not cfg.teacher.device_map
    return cfg.teacher.shard == "auto" and sharding and accelerator.num_processes > 1 and online


def _shard_teacher(accelerator: Accelerator, teacher: torch.nn.Module, setting: bool | str) -> dict[str, Any]:
    """The frozen teacher sharded for the student stage's forward passes; what each process holds."""
    whole = count_parameters(teacher)
    local = shard_for_inference(teacher)
    n = accelerator.num_processes
    accelerator.print(
        f"teacher: sharded for inference over {n} processes (fully_shard, teacher.shard={str(setting).lower()}): "
        f"{local / 1e6:.2f}M of its {whole / 1e6:.2f}M weights on each, a block gathered at a time"
    )
    return {"processes": n, "parameters": whole, "parameters_per_process": local}


def _plain_teacher(state: RunState) -> torch.nn.Module:
    """The teacher as its folder (or hub id) holds it, whole on this process's device, frozen."""
    cfg, plan = state.cfg, state.plan
    if cfg.teacher.stage.enabled:
        teacher = reload(plan.task, state.out / TEACHER_DIR, state.accelerator.device)
    else:
        teacher = load_teacher(plan)
        checks.pad_in_config(teacher, plan.tokenizer)
    return place(freeze(teacher, cfg.teacher.dtype), state.accelerator.device)


def _open(state: RunState, lock: FolderLock) -> None:
    """Claim the folder (its lock, checked again under it), write config.yaml, start the trackers."""
    accelerator, cfg, out = state.accelerator, state.cfg, state.out
    _claim(accelerator, lock, cfg, state.resume)
    if accelerator.is_main_process:
        run_folder.open_for_run(out, cfg)
    accelerator.wait_for_everyone()
    # TensorBoard writes OUTPUT/logs; the others file the run under the project "distill", named
    # after its output folder (MLFLOW_EXPERIMENT_NAME, WANDB_* and the like still apply).
    run_name = out.resolve().name
    try:
        accelerator.init_trackers(
            "distill",
            config=run_folder.flat(to_dict(cfg)),
            init_kwargs={"mlflow": {"run_name": run_name}, "wandb": {"name": run_name}},
        )
    except Exception as e:  # each tracker library raises its own types (a store it cannot reach, ...)
        if atomic.disk_problem(e) is not None:
            raise
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise DistillError(
            f"train.report_to: a tracker of {cfg.train.report_to} could not start ({reason}); set it up "
            "(for MLflow: MLFLOW_TRACKING_URI) and run again with --resume"
        ) from None


def _tokenize(state: RunState) -> None:
    plan = state.plan
    with state.accelerator.main_process_first():
        state.tokenized = plan.task.tokenize(plan.splits, plan.tokenizer, state.cfg.data)
    state.collate = plan.task.collator(plan.tokenizer, plan.teacher.config)
    eval_split = state.tokenized["validation"]
    state.probe = state.collate([eval_split[i] for i in range(min(8, len(eval_split)))])


def _teacher_stage(state: RunState, teacher: torch.nn.Module) -> torch.nn.Module:
    """The teacher fine-tuned (or trained from scratch) here, or read back from an earlier run."""
    cfg = state.cfg
    if not cfg.teacher.stage.enabled:
        return teacher
    if not state.plan.reuse_teacher:
        return _finetune_teacher(state, teacher)
    name = "teacher-train" if cfg.teacher.architecture else "teacher-finetune"
    marker = read_record(state.out / TEACHER_DIR / FINETUNE_MARKER) or {}
    state.callbacks.on_stage_end(name, state.out / TEACHER_DIR, marker.get("validation") or {})
    return teacher


def _build_student(state: RunState, teacher: torch.nn.Module) -> StudentStart:
    """The student from the (float32) teacher, as ``student.init`` says, and the baseline's copy."""
    cfg, plan = state.cfg, state.plan
    set_seed(cfg.train.seed)
    built: dict[str, Any] = {}
    student, copied = build_student(
        cfg.student,
        teacher,
        plan.task.MODEL_CLASS,
        plan.task.model_kwargs(plan.label_names),
        calibration=lambda: _calibration(cfg, plan.task, state.tokenized["train"], state.collate),
        record=built,
    )
    if built:
        state.accelerator.print(f"student: {describe_built(built)}")
    set_labels(student, plan.label_names)
    checks.pad_in_config(student, plan.tokenizer)
    # Output rows beyond the tokenizer are never trained: the shipped student never generates them.
    suppress_in_generation(student, padded_rows(student, _vocabulary(plan)))
    baseline = copy.deepcopy(student) if cfg.train.baseline else None
    return StudentStart(student, copied, built, baseline)


def _training_signal(state: RunState, teacher: torch.nn.Module, start: StudentStart) -> TrainingSignal:
    """The distillation loss and its data: sequence-level targets (made once), the teacher's
    outputs (a store made once), or the teacher online."""
    accelerator, cfg, task, out = state.accelerator, state.cfg, state.plan.task, state.out
    tokenized, collate = state.tokenized, state.collate
    projection = None
    if cfg.loss.hidden_weight > 0:
        student = start.model
        layer_map = cfg.loss.layer_map or default_layer_map(
            num_layers(student.config), num_layers(teacher.config), start.copied
        )
        projection = HiddenProjection(layer_map, hidden_size(student.config), hidden_size(teacher.config))
    loss_step = LossStep(
        task,
        cfg.loss,
        teacher=teacher,
        projection=projection,
        max_new_tokens=cfg.data.max_target_length,
        terms=tuple(memory.loss_term(reference) for reference in cfg.loss.terms),
        vocabulary=_vocabulary(state.plan),
    )
    references = tokenized["train"]  # what the student and the baseline see of the targets
    if cfg.data.reference_examples:
        references = references.select(range(min(cfg.data.reference_examples, len(references))))
    train_split = references
    if cfg.loss.sequence_kd:
        # The teacher's outputs as targets never hold its output rows beyond the tokenizer.
        with suppressing(teacher, padded_rows(teacher, _vocabulary(state.plan))):
            pseudo = pseudo_targets(
                accelerator,
                teacher,
                tokenized["train"],  # every training source, with or without a reference
                collate,
                out / PSEUDO_DIR,
                settings=pseudo_settings(cfg),
                batch_size=cfg.eval.batch_size,
                task=task,
            )
        train_split = (
            pseudo if cfg.loss.sequence_kd == "replace" else concatenate_datasets([train_split, pseudo])
        )
    if cfg.teacher.cache or cfg.loss.on_policy:
        # Each training example numbered: the store's index, and the seed of its on-policy samples.
        train_split = train_split.add_column(teacher_store.ROW, list(range(len(train_split))))
    if cfg.teacher.cache:
        # The teacher's outputs over what the student trains on, computed once (or read back);
        # the student stage then reads them and never runs the teacher.
        store = teacher_store.build(
            accelerator,
            teacher,
            train_split,
            collate,
            task.model_inputs,
            store_folder(cfg),
            settings=store_settings(cfg),
            top_k=cfg.teacher.cache_top_k if task.TOKEN_LEVEL else 0,
            temperature=cfg.loss.temperature,
            batch_size=cfg.eval.batch_size,
            chunk=cfg.teacher.cache_shard_size,
            vocabulary=_vocabulary(state.plan),
            bits=cfg.teacher.cache_bits if cfg.teacher.cache_format == "compact" else 0,
        )
        place(teacher, "cpu")  # the student stage does not need it on the device
        loss_step = LossStep(task, cfg.loss, store=store, vocabulary=_vocabulary(state.plan))
    return TrainingSignal(loss_step, train_split, references)


def _student_stage(
    state: RunState, name: str, model: torch.nn.Module, step: LossStep, dataset: Any, folder: str
) -> tuple[torch.nn.Module, TrainResult]:
    """One student stage (distill, baseline) from the same seeded state, saved to OUTPUT/folder
    and reloaded from there; a stage finished earlier is read back instead."""
    accelerator, cfg, out = state.accelerator, state.cfg, state.out
    record_path = out / STAGES_DIR / name / RECORD
    record = read_record(record_path)
    if record is not None and is_model_folder(out / folder):
        accelerator.print(f"{name}: finished earlier; using {out / folder}")
        result = TrainResult(**record["result"])
        state.callbacks.on_stage_end(name, out / folder, result.metrics)
        return reload(state.plan.task, out / folder, accelerator.device), result
    if cfg.student.lora.enabled:
        model = lora.wrap(model, cfg.student.lora, cfg.task, seed=cfg.train.seed)
    model, result = _train_stage(state, name, cfg.train, model, step, dataset)
    if cfg.student.lora.enabled:  # shipped merged into a plain model, the adapter beside it
        adapter = out / f"{folder}{lora.ADAPTER_SUFFIX}"
        model = lora.merge(accelerator, name, model, state.plan.task, state.probe, adapter)
    saved = _ship(state, name, model, out / folder)
    write_record(accelerator, record_path, {"result": dataclasses.asdict(result)})
    state.callbacks.on_stage_end(name, out / folder, result.metrics)
    return saved, result


def _report(
    state: RunState,
    entries: list[Entry],
    results: dict[str, Any],
    start: StudentStart,
    signal: TrainingSignal,
) -> dict[str, Any]:
    """Every model measured as reloaded from its folder; results.json, the report, the model
    cards, the completion record (last), then the upload (output.push_to_hub)."""
    accelerator, cfg, plan, out = state.accelerator, state.cfg, state.plan, state.out
    task = plan.task
    split = "test" if "test" in state.tokenized else "validation"
    report = evaluate_models(
        accelerator,
        task,
        entries,
        state.tokenized[split],
        state.collate,
        plan.tokenizer,
        cfg.eval,
        split=split,
        extra={"recipe": cfg.description},
    )
    if accelerator.is_main_process:
        atomic.write_json(out / "results.json", results)
        write_report(report, out)
        for entry in entries[1:]:
            seen = len(signal.train_split) if entry.role == "student" else len(signal.references)
            pushed = cfg.output.push_to_hub if entry.name == STUDENT_DIR else ""
            where = (
                f"# {pushed} on the hub\n"
                if pushed
                else f'# "{entry.name}": the path of this folder, wherever it is copied\n'
            )
            card = model_card(
                report,
                entry.name,
                how_made=how_made(
                    cfg, entry.role, start.copied, seen, accelerator.num_processes, start.built
                ),
                pipeline_tag=task.PIPELINE_TAG,
                base_model=hub_id(cfg.teacher.name_or_path),
                usage=where + task.usage_snippet(pushed or entry.name),
                dataset=dataset_id(cfg),
                dataset_name=data_name(cfg),
                license_name=teacher_license(cfg.teacher.name_or_path),
            )
            atomic.write_text(out / entry.name / "README.md", card)
        print(console_summary(report))
        shipped = ", ".join(str(out / e.name) for e in entries[1:])
        print(f"saved: {shipped}\nreport: {out / 'report.md'} (and report.json, report.png)")
    # Written last of all: the run is finished (a rerun is refused, not resumed).
    write_record(accelerator, out / RUN_RECORD, {"finished": True, "report": list(REPORT_FILES)})
    if cfg.output.push_to_hub and accelerator.is_main_process:
        print(f"uploaded: {hub.push(out / STUDENT_DIR, cfg.output.push_to_hub)}")
    return report


def trackers(cfg: RecipeConfig) -> list[Any]:
    """``train.report_to`` as Accelerate takes it: TensorBoard as distill's tracker writing one run
    per stage under OUTPUT/logs (on the main process only), the others by name."""
    from distill.tracking import StageTensorBoard

    return [
        StageTensorBoard(Path(cfg.output.dir) / "logs") if name == "tensorboard" else name
        for name in cfg.train.report_to
    ]


def _calibration(cfg: RecipeConfig, task: Any, train: Any, collate: Any) -> list[dict[str, torch.Tensor]]:
    """The batches importance is measured on: training examples drawn with train.seed, as the
    model takes them (plus the labels, which mark an encoder-decoder's target tokens)."""
    p = cfg.student.prune

    def inputs(batch: dict[str, Any]) -> dict[str, Any]:
        labels = batch.get("labels")
        return {
            **task.model_inputs(batch),
            **({"labels": labels} if isinstance(labels, torch.Tensor) else {}),
        }

    return pruning.calibration_batches(
        train,
        lambda rows: inputs(collate(rows)),
        p.calibration_examples,
        p.calibration_batch_size,
        cfg.train.seed,
    )


def _claim(accelerator: Accelerator, lock: FolderLock, cfg: RecipeConfig, resume: bool) -> None:
    """The main process takes the folder's lock and checks the folder again under it (another run
    may have started or finished it meanwhile); every process learns the outcome."""
    error = None
    if accelerator.is_main_process:
        out = Path(cfg.output.dir)
        try:
            with atomic.disk_errors(out / folder_lock.LOCK_FILE):
                lock.claim()
            run_folder.check(out, cfg, resume=resume)
        except DistillError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise DistillError(error)


def _ship(
    state: RunState, name: str, model: torch.nn.Module, folder: Path, extra: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Save ``model`` into ``folder`` and return it reloaded from there, checked to give the same
    outputs: later stages and the report use what the folder holds."""
    plan = state.plan
    return ship(state.accelerator, plan.task, name, model, plan.tokenizer, folder, state.probe, extra)


def _finetune_teacher(state: RunState, teacher: torch.nn.Module) -> torch.nn.Module:
    cfg, out = state.cfg, state.out
    ft = cfg.teacher.stage
    name = "teacher-train" if cfg.teacher.architecture else "teacher-finetune"
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
        group_by_length=ft.group_by_length,
        checkpoint_every=cfg.train.checkpoint_every,
        keep_checkpoints=cfg.train.keep_checkpoints,
        log_every=cfg.train.log_every,
    )
    stage_dir = name.replace("-", "_")
    teacher, result = _train_stage(
        state,
        name,
        stage_cfg,
        teacher,
        LossStep(state.plan.task, vocabulary=_vocabulary(state.plan)),
        state.tokenized["train"],
        stage_dir,
    )
    marker = {"settings": stage_settings(cfg), "validation": result.metrics}
    saved = _ship(state, name, teacher, out / TEACHER_DIR, {FINETUNE_MARKER: marker})
    state.callbacks.on_stage_end(name, out / TEACHER_DIR, result.metrics)
    if state.accelerator.is_main_process:
        atomic.remove(out / STAGES_DIR / stage_dir)  # its checkpoints: the teacher is saved
    state.accelerator.free_memory()
    return saved


def _train_stage(
    state: RunState,
    name: str,
    stage_cfg: TrainConfig,
    model: torch.nn.Module,
    loss_step: LossStep,
    dataset: Any,
    stage_dir: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Train ``model`` as one stage, from the state ``stage_cfg.seed`` gives; returns it unwrapped."""
    cfg, plan = state.cfg, state.plan
    set_seed(stage_cfg.seed)
    model, result = train(
        state.accelerator,
        name=name,
        cfg=stage_cfg,
        student=model,
        loss_step=loss_step,
        data=StageData(
            dataset,
            state.tokenized["validation"],
            state.collate,
            plan.task,
            cfg.eval.batch_size,
            tokenizer=plan.tokenizer,
            eval_settings=cfg.eval,
        ),
        stage_dir=state.out / STAGES_DIR / (stage_dir or name),
        resume=state.resume,
        callbacks=state.callbacks,
    )
    return state.accelerator.unwrap_model(model), result


def _vocabulary(plan: Plan) -> int | None:
    """Token-level tasks: the tokenizer's ids, over which every loss, sample and stored output is
    taken (rows of an output layer padded beyond them never are)."""
    return len(plan.tokenizer) if plan.task.TOKEN_LEVEL else None


def _teacher_source(cfg: RecipeConfig) -> str:
    if cfg.teacher.stage.enabled:
        return str(Path(cfg.output.dir) / TEACHER_DIR)
    return cfg.teacher.name_or_path


def quiet_libraries() -> None:
    """Keep the console to distill's own progress: library load reports and hub chatter off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    # PEFT (student.lora) still asks transformers a deprecated question: not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # read errors are raised, then said once
    datasets.disable_progress_bars()
