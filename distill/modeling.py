"""Loading the teacher, building the student, and checking that they share a tokenizer.

Task-specific choices (which ``AutoModelFor...`` class) come from the task module; everything
here works on any Transformer whose blocks sit in one ``nn.ModuleList``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.util
import os
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from distill.config import StudentConfig
from distill.errors import DistillError
from distill.losses import TeacherHead

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(name_or_path: str) -> str:
    """``pkg:PACKAGE/sub/folder`` -> the folder inside the installed package; anything else unchanged.

    The package is located with ``importlib.util.find_spec``, without importing it. A model passed
    from Python (``memory:teacher:...``) is the folder it was saved to for this call.
    """
    from distill import memory

    if memory.is_reference(name_or_path):
        return memory.folder(name_or_path)
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    package, _, sub = name_or_path[len("pkg:") :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            f"'{name_or_path}': package '{package}' is not installed (pip install {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.exists():
        raise DistillError(f"'{name_or_path}': {path} does not exist in the installed package")
    return str(path)


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call ``loader(path, **kwargs)`` (a ``from_pretrained``), turning load failures into one-line errors."""
    path = resolve_path(name_or_path)
    local = Path(path).exists()
    try:
        return loader(path, **kwargs)
    except SafetensorError as e:  # a truncated or corrupt weights file
        raise DistillError(f"cannot load {what} '{name_or_path}': a weights file is damaged ({e})") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        if not local:
            raise
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistillError(f"cannot load {what} '{name_or_path}': {reason}") from None
    except (OSError, ValueError, KeyError) as e:  # what transformers / huggingface_hub raise for bad ids
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not local and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False"):
            reason = "not a local folder and not in the hub cache, and HF_HUB_OFFLINE is set, so nothing is downloaded"
        elif not local:
            reason = f"not a local folder, and the hub could not provide it ({reason[:200]})"
        raise DistillError(f"cannot load {what} '{name_or_path}': {reason}") from None


def num_layers(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise DistillError(f"cannot tell how many layers a '{config.model_type}' model has")


def hidden_size(config: Any) -> int:
    for attr in ("hidden_size", "dim", "d_model", "n_embd"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise DistillError(f"cannot tell the hidden width of a '{config.model_type}' model")


def find_layer_list(model: nn.Module, count: int) -> str:
    """Name of the first ``nn.ModuleList`` with ``count`` entries: the model's stack of blocks."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name
    raise DistillError(
        f"student.init=copy_layers: a {type(model).__name__} has no list of {count} layers to copy from "
        "(its layers are shared, as in ALBERT); use student.init=from_config with "
        "student.config_overrides.num_hidden_layers, or a pretrained student"
    )


def evenly_spaced(num_teacher: int, num_student: int) -> list[int]:
    """DistilBERT-style choice of teacher layers: ``[i * n // k for i in range(k)]`` (6 of 12 -> 0, 2, ..., 10)."""
    return [i * num_teacher // num_student for i in range(num_student)]


def copy_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A student of the teacher's class with the chosen teacher layers, embeddings and head copied.

    Student layer ``i`` is a copy of teacher layer ``layers[i]``; every other weight is copied as is.
    """
    n_teacher = num_layers(teacher.config)
    prefix = find_layer_list(teacher, n_teacher)
    config = copy.deepcopy(teacher.config)
    # Settings indexed by layer (ModernBERT's and Gemma's layer_types: global or sliding-window
    # attention) follow the copied layers, so that each keeps the attention it was trained with.
    for key in per_layer_fields(config, n_teacher):
        setattr(config, key, [getattr(config, key)[i] for i in layers])
    try:
        config.num_hidden_layers = len(layers)
    except (NotImplementedError, AttributeError, ValueError) as e:  # a depth derived from other fields
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistillError(
            f"student.init: copy_layers cannot set the depth of a {config.model_type} config ({reason}); "
            "use student.init=from_config with the config's own depth fields in student.config_overrides"
        ) from None
    return _copy_with_map(teacher, config, {prefix: layers})


# Per-layer fields whose names do not say "layer": Longformer's attention window of each layer.
_PER_LAYER = ("attention_window",)


def per_layer_fields(config: Any, depth: int) -> list[str]:
    """Config fields that hold one value per layer: lists of ``depth`` entries named for layers."""
    return [
        key
        for key, value in config.to_dict().items()
        if ("layer" in key or key in _PER_LAYER)
        and isinstance(value, (list, tuple))
        and len(value) == depth
        and depth > 1
    ]


# Config fields holding (encoder, decoder) depth: BART / Marian / mBART, then T5.
_SEQ2SEQ_DEPTH_FIELDS = (("encoder_layers", "decoder_layers"), ("num_layers", "num_decoder_layers"))


def encoder_decoder_depths(config: Any) -> tuple[int, int]:
    for enc, dec in _SEQ2SEQ_DEPTH_FIELDS:
        if isinstance(getattr(config, enc, None), int) and isinstance(getattr(config, dec, None), int):
            return getattr(config, enc), getattr(config, dec)
    raise DistillError(f"cannot tell the encoder and decoder depth of a '{config.model_type}' model")


def spread(num_teacher: int, num_student: int) -> list[int]:
    """Maximally spaced layers, first and last kept (distil-whisper / distilbart): 2 of 6 -> 0, 5; 1 -> 0."""
    if num_student == 1:
        return [0]
    return [round(i * (num_teacher - 1) / (num_student - 1)) for i in range(num_student)]


def copy_encoder_decoder_layers(
    teacher: nn.Module, encoder_layers: list[int], decoder_layers: list[int]
) -> nn.Module:
    """An encoder-decoder student with chosen encoder and decoder layers copied from the teacher.

    Embeddings, layer norms and the LM head are copied as they are. Weights that only the first
    block has (T5's relative position bias) come from the teacher's first block.
    """
    n_enc, n_dec = encoder_decoder_depths(teacher.config)
    enc_prefix = _find_stack(teacher, "encoder", n_enc)
    dec_prefix = _find_stack(teacher, "decoder", n_dec)
    config = copy.deepcopy(teacher.config)
    for enc, dec in _SEQ2SEQ_DEPTH_FIELDS:
        if hasattr(config, enc) and hasattr(config, dec):
            setattr(config, enc, len(encoder_layers))
            setattr(config, dec, len(decoder_layers))
            break
    return _copy_with_map(teacher, config, {enc_prefix: encoder_layers, dec_prefix: decoder_layers})


def _find_stack(model: nn.Module, side: str, count: int) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and side in name.split("."):
            return name
    raise DistillError(f"cannot find the {count} {side} layers of a {type(model).__name__}")


def _copy_with_map(teacher: nn.Module, config: Any, stacks: dict[str, list[int]]) -> nn.Module:
    student = type(teacher)(config)
    patterns = {prefix: re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$") for prefix in stacks}
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source = key
        for prefix, pattern in patterns.items():
            match = pattern.match(key)
            if match:
                source = f"{prefix}.{stacks[prefix][int(match.group(1))]}.{match.group(2)}"
                if source not in teacher_state:  # e.g. T5's relative bias lives in block 0 only
                    source = f"{prefix}.0.{match.group(2)}"
                break
        state[key] = teacher_state[source].detach().clone()
    student.load_state_dict(state, strict=True)
    return student


def build_student(
    spec: StudentConfig,
    teacher: nn.Module,
    model_class: Any,
    label_kwargs: dict[str, Any],
    calibration: Callable[[], list[dict[str, torch.Tensor]]] | None = None,
    record: dict[str, Any] | None = None,
) -> tuple[nn.Module, list[int] | None]:
    """Build the student as the recipe says. Returns the student and the copied teacher layers (if any).

    ``calibration`` gives the batches that importance is measured on (``student.init=prune``,
    ``layers: auto``); without it (``validate``'s trial student) the first units are kept, which
    builds the same shapes. What was measured and kept goes into ``record``.
    """
    from distill import pruning

    def importance(width: bool, heads: bool, channels: bool = False) -> pruning.Importance | None:
        if calibration is None:
            return None
        return pruning.measure(
            teacher,
            calibration(),
            method=spec.prune.depth_importance,
            width=width,
            heads=heads,
            channels=channels,
        )

    def ranked(n_keep: int) -> list[int]:
        scores = importance(False, False)
        if record is not None and scores is not None:
            record["importance"] = scores.summary()
        if scores is None:
            return list(range(n_keep))
        return pruning.rank_layers(next(iter(scores.layers.values())), n_keep)

    if spec.init == "pretrained":  # a model of its own: its own generation settings
        return load_pretrained(
            model_class.from_pretrained, spec.name_or_path, "student", **label_kwargs
        ), None
    student, layers = _built_from_teacher(
        spec, teacher, model_class, label_kwargs, ranked, importance, record
    )
    carry_generation_settings(teacher, student)
    return student, layers


def carry_generation_settings(teacher: nn.Module, student: nn.Module) -> None:
    """A student built from the teacher generates as the teacher does: its ``generation_config``
    (beams, lengths, NLLB's and mBART-50's ``forced_bos_token_id``, ...) is the teacher's, not the
    defaults a new model derives from its config."""
    own = getattr(teacher, "generation_config", None)
    if own is not None and getattr(student, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(own)


def _built_from_teacher(
    spec: StudentConfig,
    teacher: nn.Module,
    model_class: Any,
    label_kwargs: dict[str, Any],
    ranked: Callable[[int], list[int]],
    importance: Callable[..., Any],
    record: dict[str, Any] | None,
) -> tuple[nn.Module, list[int] | None]:
    from distill import pruning

    n_teacher = num_layers(teacher.config)
    if spec.init == "copy_layers" and getattr(teacher.config, "is_encoder_decoder", False):
        n_enc, n_dec = encoder_decoder_depths(teacher.config)
        enc = spec.encoder_layers if spec.encoder_layers is not None else list(range(n_enc))
        if spec.decoder_layers == "auto":
            dec = ranked(spec.num_decoder_layers)
        elif spec.decoder_layers is not None:
            dec = spec.decoder_layers
        else:
            dec = spread(n_dec, spec.num_decoder_layers)
        return copy_encoder_decoder_layers(teacher, enc, dec), dec
    if spec.init == "copy_layers":
        if spec.layers == "auto":
            layers = ranked(spec.num_layers)
        elif spec.layers is not None:
            layers = spec.layers
        else:
            layers = evenly_spaced(n_teacher, spec.num_layers)
        return copy_layers(teacher, layers), layers
    if spec.init == "prune":
        p = spec.prune
        pruning.check_prunable(teacher, p)
        scores = importance(p.intermediate != 1, p.heads != 1 or p.hidden != 1, p.hidden != 1)
        student, kept = pruning.prune(teacher, p, scores)
        if record is not None:
            record["pruned"] = kept
            if scores is not None:
                record["importance"] = scores.summary()
        return student, kept["layers"]
    config = student_config(teacher.config, spec.config_overrides, label_kwargs)  # from_config
    return model_class.from_config(config), None


def student_config(
    teacher_config: Any, overrides: dict[str, Any], extra: dict[str, Any] | None = None
) -> Any:
    """The teacher's config with ``student.config_overrides`` applied (``from_config`` students).

    Keys may be the config's own fields or their common aliases (``attribute_map``:
    ``num_hidden_layers`` is DistilBERT's ``n_layers`` and GPT-2's ``n_layer``).
    """
    base = teacher_config.to_dict()
    aliases = dict(getattr(type(teacher_config), "attribute_map", {}) or {})
    depth_keys = {"num_hidden_layers", aliases.get("num_hidden_layers", "num_hidden_layers")}
    if depth_keys & {aliases.get(k, k) for k in overrides}:
        # Another depth: per-layer settings are rebuilt by the config from its own rule (e.g.
        # ModernBERT's global_attn_every_n_layers) unless the overrides give them.
        for key in per_layer_fields(teacher_config, num_layers(teacher_config)):
            if key not in overrides:
                base.pop(key, None)
    resolved = {}
    for key, value in overrides.items():
        real = aliases.get(key, key)
        if real not in base:
            close = difflib.get_close_matches(key, [*base, *aliases], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DistillError(
                f"student.config_overrides.{key}: not a field of the teacher's {teacher_config.model_type} config{hint}"
            )
        resolved[real] = value
    try:
        return type(teacher_config).from_dict({**base, **resolved, **(extra or {})})
    except (
        Exception
    ) as e:  # the config class's own validation (huggingface_hub's strict dataclasses, ValueError)
        cause = e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[-1].strip()[:200]
        raise DistillError(
            f"student.config_overrides: the {teacher_config.model_type} config refuses {sorted(resolved)}: {reason}"
        ) from None


def teacher_dtype(name: str) -> torch.dtype:
    """``teacher.dtype``; ``auto`` is bfloat16 on a GPU that computes in it (half the teacher's
    memory and time, the precision of its outputs kept by the float32 losses), else float32."""
    if name == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 else torch.float32
    return DTYPES[name]


def freeze(model: nn.Module, dtype: str = "float32") -> nn.Module:
    """The teacher's state during distillation: eval mode, no gradients, optionally a lower precision
    (a teacher placed by ``teacher.device_map`` was loaded in it)."""
    model.eval()
    model.requires_grad_(False)
    return model if dispatched(model) else model.to(teacher_dtype(dtype))


def dispatched(model: nn.Module) -> bool:
    """Placed by Accelerate's big-model dispatch (``teacher.device_map``): across devices and disk,
    moved by its own hooks, never by ``.to()``."""
    return bool(getattr(model, "hf_device_map", None))


def place(model: nn.Module, device: Any) -> nn.Module:
    """``model`` on ``device``; a dispatched or sharded model stays where its placement put it."""
    return model if dispatched(model) or sharded(model) else model.to(device)


def sharded(model: nn.Module) -> bool:
    """Sharded by FSDP2's ``fully_shard``: each process holds a part of every weight."""
    if not torch.distributed.is_available():  # a torch build without distributed support
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_for_inference(model: nn.Module) -> int:
    """Shard a frozen model over the processes with FSDP2's ``fully_shard``, for forward passes only:
    each block (the classes transformers keeps whole, ``_no_split_modules``) and then the rest
    (embeddings, heads, tied weights together) are their own units, gathered just before their
    forward and freed right after it, so a process holds 1/N of the weights plus one block at a time.
    The model moves to the processes' device as it is sharded. Returns this process's share of the
    weights (elements). Every process must then run the same number of forward passes."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in reversed(list(model.modules())[1:]):  # inner units before the ones around them
        if type(module).__name__ in blocks and not sharded(module):
            fully_shard(module, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return sum(p.to_local().numel() for p in model.parameters())


def placement(cfg: Any) -> dict[str, Any]:
    """``from_pretrained`` arguments of ``teacher.device_map``: the placement, the memory caps, the
    teacher's precision and a private folder (removed at exit) for what goes to disk."""
    if not cfg.device_map:
        return {}
    import atexit
    import shutil

    from distill.memory import private_folder

    folder = private_folder("offload")  # a killed run's is removed by the next one
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    memory = {int(k) if str(k).isdigit() else k: v for k, v in cfg.max_memory.items()}
    return {
        "device_map": cfg.device_map,
        **({"max_memory": memory} if memory else {}),
        "offload_folder": folder,
        "dtype": teacher_dtype(cfg.dtype),
    }


def freeze_unsaved(model: nn.Module) -> list[str]:
    """Stop training the parameters that ``save_pretrained`` leaves out (``_keys_to_ignore_on_save``:
    Marian's sinusoidal position tables are parameters, rebuilt from the config on load).

    Trained, they would make the saved model differ from the one in memory. Returns their names.
    """
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    frozen = []
    for name, p in model.named_parameters():
        if name in unsaved and p.requires_grad:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_layer_map(num_student: int, num_teacher: int, copied: list[int] | None) -> dict[int, int]:
    """Which teacher layer each student layer imitates: the one it was copied from, else spread evenly
    so that the last student layer matches the last teacher layer."""
    if copied is not None:
        return dict(enumerate(copied))
    return {i: (i + 1) * num_teacher // num_student - 1 for i in range(num_student)}


class HiddenProjection(nn.Module):
    """Learned linear maps from student to teacher width, one per mapped layer (identity when equal).

    Trained with the student and saved in checkpoints, but not part of the exported student.
    """

    def __init__(self, layer_map: dict[int, int], student_width: int, teacher_width: int):
        super().__init__()
        self.layer_map = dict(layer_map)
        self.proj = nn.ModuleDict(
            {
                str(s): (
                    nn.Linear(student_width, teacher_width)
                    if student_width != teacher_width
                    else nn.Identity()
                )
                for s in self.layer_map
            }
        )

    def forward(self, student_layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj[str(student_layer)](hidden)


def check_same_tokenizer(teacher_tok: Any, student_tok: Any) -> None:
    """Teacher and student must tokenize identically: same vocabulary and special tokens."""
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        only_t = sorted(set(t_vocab) - set(s_vocab))[:3]
        only_s = sorted(set(s_vocab) - set(t_vocab))[:3]
        moved = sorted(k for k in set(t_vocab) & set(s_vocab) if t_vocab[k] != s_vocab[k])[:3]
        detail = f"vocabulary sizes {len(t_vocab)} vs {len(s_vocab)}"
        if only_t:
            detail += f"; only in the teacher's: {only_t}"
        if only_s:
            detail += f"; only in the student's: {only_s}"
        if moved:
            detail += f"; different ids for: {moved}"
        raise DistillError(f"the student's tokenizer differs from the teacher's: {detail}")
    t_special = _special_tokens(teacher_tok)
    s_special = _special_tokens(student_tok)
    if t_special != s_special:
        diff = {
            k: (t_special.get(k), s_special.get(k))
            for k in set(t_special) | set(s_special)
            if t_special.get(k) != s_special.get(k)
        }
        name, (t, s) = sorted(diff.items())[0]
        raise DistillError(
            f"the student's tokenizer differs from the teacher's: special token {name} is {t} in the teacher's, {s} in the student's"
        )


def _special_tokens(tok: Any) -> dict[str, tuple[str, int] | None]:
    out = {}
    for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        token = getattr(tok, name, None)
        out[name] = None if token is None else (str(token), tok.convert_tokens_to_ids(str(token)))
    return out


class _HeadReached(Exception):
    """Raised by a hook at the teacher's output head: the forward pass stops there."""


def teacher_head(model: nn.Module, inputs: dict[str, torch.Tensor]) -> TeacherHead | None:
    """The model's logits as its last hidden states and its output head, computed only when
    sliced (:class:`distill.losses.TeacherHead`).

    The forward pass runs up to the output layer (``get_output_embeddings()``), whose input is
    captured as it is, after whatever the family does to it first (T5 rescales it for its tied
    embeddings); the family's bias after the layer (Marian's and BART's ``final_logits_bias``) is
    added to each slice. :class:`distill.loss_step.LossStep` checks once that the result equals the
    model's own logits, and uses those otherwise (``None``: the family has no such layer).
    """
    head = model.get_output_embeddings()
    if head is None or isinstance(head, nn.Embedding):  # FSMT names its input embeddings
        return None
    captured: dict[str, torch.Tensor] = {}

    def stop(module: nn.Module, args: tuple) -> None:
        captured["hidden"] = args[0]
        raise _HeadReached

    handle = head.register_forward_pre_hook(stop)
    try:
        model(**inputs)
    except _HeadReached:
        pass
    finally:
        handle.remove()
    if "hidden" not in captured:  # the forward pass never reached the layer
        return None
    bias = getattr(model, "final_logits_bias", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        return out + bias.to(out.dtype) if bias is not None else out

    return TeacherHead(captured["hidden"], logits)


# ----------------------------------------------------------------------------- encoder-decoders


def decoder_inputs_builder(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The family's own way to build decoder inputs from labels (padding -100).

    It is the model class's ``prepare_decoder_input_ids_from_labels``, called on the config alone
    so that the collator needs no model: BART, Marian, Pegasus put the decoder start token before
    the labels shifted right; T5 does the same through ``_shift_right``; MBart, PLBart and FSMT
    move the last token of each target (the end or language token) to the front. A family without
    the method gets the first rule, which needs ``decoder_start_token_id``.
    """
    from transformers import AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM._model_mapping.get(type(config), None)
    method = getattr(cls, "prepare_decoder_input_ids_from_labels", None) if cls is not None else None
    if method is None:
        start, pad = getattr(config, "decoder_start_token_id", None), config.pad_token_id
        if start is None or pad is None:
            raise DistillError(
                f"{config.model_type}: the config names no decoder_start_token_id (or pad_token_id), "
                "so the decoder's first input is unknown; set it in config.json"
            )

        def shift(labels: torch.Tensor) -> torch.Tensor:
            decoder = torch.full_like(labels, pad)
            decoder[:, 0] = start
            decoder[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
            return decoder

        return shift
    holder = SimpleNamespace(config=config)  # the methods read nothing but ``self.config``
    if hasattr(cls, "_shift_right"):
        holder._shift_right = MethodType(cls._shift_right, holder)

    def family_shift(labels: torch.Tensor) -> torch.Tensor:
        try:
            return method(holder, labels=labels.clone())  # FSMT's fills the -100s in place
        except (ValueError, TypeError, RuntimeError) as e:
            raise DistillError(
                f"{config.model_type}: decoder inputs cannot be built from the labels: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            ) from None

    return family_shift


def generation_start(model: Any) -> int | None:
    """The token ``generate()`` starts the decoder with: the generation config's decoder start
    token, else its beginning-of-sequence token (as transformers falls back)."""
    gen = getattr(model, "generation_config", None)
    for source in (gen, model.config):
        if source is None:
            continue
        for name in ("decoder_start_token_id", "bos_token_id"):
            value = getattr(source, name, None)
            if value is not None:
                return int(value)
    return None


# ------------------------------------------------------------------- vocabularies padded beyond the tokenizer


def padded_rows(model: nn.Module, vocabulary: int | None) -> list[int]:
    """The ids of the model's output rows beyond the tokenizer's ``vocabulary`` (an output layer
    padded to a multiple, as Qwen's are): rows no loss, sample or stored output ever uses."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = head.weight.shape[0] if head is not None and hasattr(head, "weight") else None
    if vocabulary is None or rows is None or rows <= vocabulary:
        return []
    return list(range(vocabulary, rows))


def suppress_in_generation(model: nn.Module, ids: list[int]) -> None:
    """Write ``ids`` into the model's generation config as ``suppress_tokens``: ``generate()``,
    ours and a user's of the saved folder alike, never produces them."""
    if not ids or getattr(model, "generation_config", None) is None:
        return
    known = list(model.generation_config.suppress_tokens or [])
    model.generation_config.suppress_tokens = known + [i for i in ids if i not in set(known)]


@contextlib.contextmanager
def suppressing(model: nn.Module, ids: list[int]) -> Iterator[None]:
    """``generate()`` never produces ``ids`` inside the block; the model's generation config is as
    it was afterwards (for a teacher: its outputs as targets, its own config in the report)."""
    config = getattr(model, "generation_config", None)
    if not ids or config is None:
        yield
        return
    before = config.suppress_tokens
    suppress_in_generation(model, ids)
    try:
        yield
    finally:
        config.suppress_tokens = before


def state_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()``'s items, in its order, with a dispatched model's offloaded weights
    read in as each module is visited (a module's weights are held only while it and its
    submodules are visited, as its forward pass holds them)."""
    if not dispatched(model):
        yield from model.state_dict().items()
        return
    from accelerate.utils import align_module_device

    def visit(module: nn.Module, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
        with align_module_device(module):
            for name, p in module._parameters.items():
                if p is not None:
                    yield prefix + name, p.detach()
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    yield prefix + name, b
            for name, child in module._modules.items():
                if child is not None:
                    yield from visit(child, f"{prefix}{name}.")

    yield from visit(model, "")
