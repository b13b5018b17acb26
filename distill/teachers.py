"""Teachers that distill makes itself: built from an architecture with a tokenizer trained on the
recipe's texts, and the settings that decide when a trained teacher (or its outputs) can be reused."""

from __future__ import annotations

import difflib
import json
from types import ModuleType
from typing import Any

import torch
from datasets import DatasetDict
from transformers import AutoConfig

from distill import store_codec
from distill.config import RecipeConfig, to_dict
from distill.errors import DistillError
from distill.modeling import decoder_inputs_builder, teacher_dtype
from distill.tasks import TASKS
from distill.tokenizer_training import check_round_trip, train_tokenizer


def stage_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """What decides the fine-tuned teacher: reuse it only if all of this is unchanged."""
    settings: dict[str, Any] = {
        f"teacher.{k}": v
        for k, v in to_dict(cfg.teacher).items()
        # how it is used later, not what it is: its precision, its store, where it is placed
        if k not in ("dtype", "finetune", "train", "device_map", "max_memory", "shard")
        and not k.startswith("cache")
    }
    stage = "train" if cfg.teacher.architecture else "finetune"
    settings.update({f"teacher.{stage}.{k}": v for k, v in to_dict(cfg.teacher.stage).items()})
    # reference_examples limits what the student sees, not what the teacher is trained on.
    settings.update({f"data.{k}": v for k, v in to_dict(cfg.data).items() if k != "reference_examples"})
    settings["train.mixed_precision"] = cfg.train.mixed_precision or "no"  # the stage trains in it
    return json.loads(json.dumps(settings))


def new_teacher_config(cfg: RecipeConfig, raw: DatasetDict, task: ModuleType) -> tuple[Any, Any]:
    """For a teacher built from scratch: a tokenizer trained on the training texts, and the config."""
    from transformers import CONFIG_MAPPING

    arch = dict(cfg.teacher.architecture)
    model_type = arch.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DistillError(f"teacher.architecture.model_type: unknown model type '{model_type}'{hint}")
    known = CONFIG_MAPPING[model_type]().to_dict()
    for key in arch:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DistillError(f"teacher.architecture.{key}: not a field of a {model_type} config{hint}")

    def texts():
        for column in task.columns(cfg.data).values():
            for value in raw["train"][column]:
                yield from (value.values() if isinstance(value, dict) else [value])

    tokenizer = train_tokenizer(
        texts(), cfg.teacher.tokenizer_vocab_size, model_max_length=task.max_input_length(None, cfg.data)
    )
    held_out = [raw[s] for s in ("validation", "test") if s in raw]
    check_round_trip(
        tokenizer,
        (
            t
            for ds in held_out
            for column in task.columns(cfg.data).values()
            for v in ds[column]
            for t in (v.values() if isinstance(v, dict) else [v])
        ),
    )
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if CONFIG_MAPPING[model_type]().is_encoder_decoder:
        ids.update(decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **arch)
    if config.is_encoder_decoder:
        # generate() starts with the token the family's decoder inputs start with (MBart: the end
        # token each target closes with, moved to the front; the others: the start token set above)
        ending = torch.tensor([[tokenizer.eos_token_id]])
        config.decoder_start_token_id = int(decoder_inputs_builder(config)(ending)[0, 0])
    return tokenizer, config


def pseudo_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """What decides the teacher's outputs: reuse them only if all of this is unchanged."""
    settings = stage_settings(cfg)
    settings.update(
        {
            "teacher.dtype": str(teacher_dtype(cfg.teacher.dtype)).removeprefix("torch."),
            "num_beams": cfg.loss.sequence_kd_beams,
            "max_new_tokens": cfg.data.max_target_length,
        }
    )
    return settings


def store_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """What decides the stored teacher outputs besides the teacher's weights and the data."""
    settings: dict[str, Any] = {
        "task": cfg.task,
        "teacher.dtype": str(teacher_dtype(cfg.teacher.dtype)).removeprefix("torch."),
        "train.mixed_precision": cfg.train.mixed_precision or "no",  # the teacher runs under its autocast
        "data.max_length": cfg.data.max_length,
    }
    if TASKS[cfg.task].TOKEN_LEVEL:  # top-k log-probabilities at the recipe's temperature
        settings.update(
            {
                "data.max_target_length": cfg.data.max_target_length,
                "teacher.cache_top_k": cfg.teacher.cache_top_k,
                "loss.temperature": cfg.loss.temperature,
            }
        )
        if cfg.teacher.cache_format == "compact":  # exact stores record no format: they predate it
            settings.update(
                {"teacher.cache_format": store_codec.FORMAT, "teacher.cache_bits": cfg.teacher.cache_bits}
            )
    return settings
