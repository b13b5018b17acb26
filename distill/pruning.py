"""Students built by pruning the teacher where it matters least (Minitron, ShortGPT).

Importance is measured on calibration batches drawn (seeded) from the training split, before any
training, with the teacher frozen:

- **depth**: each block of the layer stack (the decoder's, for encoder-decoders) is scored either by
  its *block influence* (ShortGPT: 1 - mean cosine similarity of the block's input and output hidden
  states over the real tokens) or by the divergence its removal causes (``skip_kl``: the mean KL from
  the whole teacher's output distribution to the teacher's with that one block skipped, the
  distillation loss itself). The highest-scoring blocks are kept, in their order.
- **width**: MLP neurons by their mean absolute activation (the input of the MLP's down projection),
  attention heads by the mean L2 norm of their output (the input of the output projection; under
  grouped-query attention whole key/value groups are kept or dropped with their query heads), as
  Minitron does. Every layer keeps the same number (the config has one size), each its own best.

The result is a plain model of the teacher's class and a smaller config, every kept weight copied
from the teacher. What a family cannot be pruned along is refused in one line.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from distill.errors import DistillError

DEPTH_METHODS = ("skip_kl", "block_influence")
# Config fields that give the MLP's width, per side of an encoder-decoder ("" for one stack).
FFN_FIELDS = {
    "": ("intermediate_size", "n_inner", "d_ff", "ffn_dim", "hidden_dim", "intermediate_dim"),
    "encoder": ("encoder_ffn_dim", "d_ff", "intermediate_size", "ffn_dim"),
    "decoder": ("decoder_ffn_dim", "d_ff", "intermediate_size", "ffn_dim"),
}
# The attention projections of a block, by role: the names Llama / Mistral / Qwen / BART (q_proj ...
# o_proj, out_proj), BERT and its kin (self.query ... output.dense), DistilBERT (q_lin ... out_lin)
# and T5 (q, k, v, o) give them.
ROLE_NAMES = {
    "q_proj": ("q_proj", "query", "q_lin", "q"),
    "k_proj": ("k_proj", "key", "k_lin", "k"),
    "v_proj": ("v_proj", "value", "v_lin", "v"),
    "o_proj": ("o_proj", "out_proj", "out_lin", "o"),
}
# Attention over another sequence (BERT's crossattention, BART's encoder_attn, T5's EncDecAttention).
_CROSS = re.compile(r"cross|encoder_attn|encdec", re.IGNORECASE)
# Config fields that give the hidden (embedding) width.
HIDDEN_FIELDS = ("hidden_size", "dim", "d_model", "n_embd")


@dataclasses.dataclass
class Stack:
    """One stack of blocks: its module path, depth, and the side ("" / encoder / decoder)."""

    prefix: str
    depth: int
    side: str = ""


@dataclasses.dataclass
class Importance:
    """What was measured, per stack prefix: block scores, MLP neuron and head (group) scores."""

    method: str
    layers: dict[str, list[float]]
    neurons: dict[str, list[torch.Tensor]]
    heads: dict[str, list[torch.Tensor]]
    examples: int
    hidden: torch.Tensor | None = None  # per hidden channel: mean |output| of the norms, summed

    def summary(self) -> dict[str, Any]:
        return {
            "depth_method": self.method,
            "calibration_examples": self.examples,
            "layer_scores": {k: [round(float(s), 6) for s in v] for k, v in self.layers.items()},
        }


def size_from(target: float, full: int, what: str) -> int:
    """A target given as a fraction of ``full`` (0 < target <= 1) or a count (an integer > 1)."""
    if target <= 0:
        raise DistillError(f"{what}: must be a fraction in (0, 1] or a count, got {target:g}")
    if target <= 1:
        return max(1, math.floor(target * full + 1e-9))
    if not float(target).is_integer():
        raise DistillError(f"{what}: a count must be a whole number, got {target:g}")
    if target > full:
        raise DistillError(f"{what}: {int(target)} is more than the teacher's {full}")
    return int(target)


# ----------------------------------------------------------------------------- structure


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear layer, transformers' Conv1D (GPT-2) included."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def mlp_parts(layer: nn.Module, hidden: int) -> tuple[int, list[str], list[str]] | None:
    """The MLP of one block: (width, up projections, down projections), or None if it has none we
    can tell apart (a width equal to the hidden size, experts, ...)."""
    linears = {
        name: dims
        for name, m in layer.named_modules()
        if (dims := linear_dims(m)) is not None and not _ATTENTION.search(name)
    }
    widths = {d for dims in linears.values() for d in dims if d != hidden}
    for width in sorted(widths, reverse=True):
        down = [n for n, (i, o) in linears.items() if i == width and o == hidden]
        up = [n for n, (i, o) in linears.items() if o == width and i == hidden]
        if len(down) == 1 and up:
            return width, up, down
    return None


# Module names inside a block that belong to attention (BERT's attention.*, GPT-2's attn, BART's
# self_attn / encoder_attn, T5's SelfAttention / EncDecAttention, Llama's self_attn).
_ATTENTION = re.compile(r"att", re.IGNORECASE)


def attention_parts(layer: nn.Module) -> dict[str, str] | None:
    """Module names of the q/k/v/o projections (roles ``q_proj`` ... ``o_proj``) of a block's
    self-attention, when it has one linear layer per role; else None (GPT-2's fused c_attn)."""
    found: dict[str, str] = {}
    for name, module in layer.named_modules():
        if not isinstance(module, nn.Linear) or _CROSS.search(name):
            continue
        leaf = name.rsplit(".", 1)[-1]
        for role, leaves in ROLE_NAMES.items():
            if leaf in leaves or (role == "o_proj" and name.endswith("attention.output.dense")):
                found.setdefault(role, name)
    return found if len(found) == 4 else None


def stacks_of(model: nn.Module) -> list[Stack]:
    """The model's stacks of blocks: one, or an encoder-decoder's encoder and decoder."""
    from distill.modeling import _find_stack, encoder_decoder_depths, find_layer_list, num_layers

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        n_enc, n_dec = encoder_decoder_depths(config)
        return [
            Stack(_find_stack(model, "encoder", n_enc), n_enc, "encoder"),
            Stack(_find_stack(model, "decoder", n_dec), n_dec, "decoder"),
        ]
    n = num_layers(config)
    return [Stack(find_layer_list(model, n), n)]


def depth_stack(stacks: list[Stack]) -> Stack:
    """The stack whose depth is pruned: the only one, or an encoder-decoder's decoder."""
    return stacks[-1]


def hidden_of(config: Any) -> int:
    from distill.modeling import hidden_size

    return hidden_size(config)


# ----------------------------------------------------------------------------- measuring


def calibration_batches(
    dataset: Any, collate: Callable, examples: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """``examples`` training examples drawn with ``seed``, collated in batches (tensors only)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:examples].tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start : start + batch_size]])
        batches.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
    return batches


def _token_mask(batch: dict[str, torch.Tensor], hidden: torch.Tensor, side: str) -> torch.Tensor:
    """Which positions of ``hidden`` [batch, sequence, width] are real tokens."""
    shape = hidden.shape[:2]
    labels = batch.get("labels")
    if side == "decoder" and labels is not None and labels.shape == shape:
        return labels != -100
    mask = batch.get("attention_mask")
    if side != "decoder" and mask is not None and mask.shape == shape:
        return mask.bool()
    return torch.ones(shape, dtype=torch.bool)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)


def _softmax_kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    p, q = _log_probs(reference), _log_probs(logits)
    return (p.exp() * (p - q)).sum(-1)


def _bernoulli_kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Each label's yes/no KL, summed over the labels: outputs read through a sigmoid each."""
    reference, logits = reference.double(), logits.double()  # small divergences: float32 cancels
    t1, t0 = F.logsigmoid(reference), F.logsigmoid(-reference)
    s1, s0 = F.logsigmoid(logits), F.logsigmoid(-logits)
    return (t1.exp() * (t1 - s1) + t0.exp() * (t0 - s0)).sum(-1)


def _squared(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return (reference.float() - logits.float()).pow(2).sum(-1)


# How a model's outputs are read, by its config's problem_type (Transformers' own names): softmax
# distributions unless it says otherwise. One output (regression) has no distribution to compare.
_DIVERGENCES = {"multi_label_classification": _bernoulli_kl, "regression": _squared}


def _divergence(config: Any, outputs: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    found = _DIVERGENCES.get(getattr(config, "problem_type", None) or "")
    return found or (_squared if outputs == 1 else _softmax_kl)


def _kl(
    reference: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor | None,
    divergence: Callable = _softmax_kl,
) -> torch.Tensor:
    """Summed divergence of ``logits`` from ``reference`` over the real positions, and how many
    there were."""
    per = divergence(reference, logits)
    if per.dim() == 2 and mask is not None and mask.shape == per.shape:
        return per[mask].sum(), mask.sum()
    return per.sum(), torch.tensor(per.numel())


@torch.no_grad()
def measure(
    teacher: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    *,
    method: str,
    width: bool,
    heads: bool,
    channels: bool = False,
) -> Importance:
    """Every score the pruning needs, in one pass over the calibration batches (plus one pass per
    block for ``skip_kl``). Deterministic: the teacher is in eval mode, the batches are fixed."""
    if method not in DEPTH_METHODS:
        raise DistillError(
            f"student.prune.depth_importance: one of {', '.join(DEPTH_METHODS)}, got {method!r}"
        )
    was_training = teacher.training
    teacher.eval()
    stacks = stacks_of(teacher)
    deep = depth_stack(stacks)
    hidden = hidden_of(teacher.config)
    device = next(teacher.parameters()).device
    n_examples = sum(len(next(iter(b.values()))) for b in batches)

    cos_sum = torch.zeros(deep.depth, dtype=torch.float64)
    cos_count = torch.zeros(deep.depth, dtype=torch.float64)
    neurons: dict[str, list[torch.Tensor]] = {}
    head_scores: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, list[float]] = {}
    handles = []
    state: dict[str, Any] = {}
    channel_score = torch.zeros(hidden, dtype=torch.float64)
    if channels:  # Minitron: a channel's importance is its magnitude at the outputs of the norms
        for module in teacher.modules():
            if _is_norm(module, hidden):

                def norm_out(module, args, output):
                    y = _first(output)
                    if y.dim() == 3:
                        mask = _token_mask(state["batch"], y, state["side"](module)).to(y.device)
                        y = y[mask]
                    y = y.reshape(-1, y.shape[-1]).float().abs()
                    channel_score.add_((y.sum(0) / max(len(y), 1)).double().cpu())

                handles.append(module.register_forward_hook(norm_out))
        sides = {id(m): st.side for st in stacks for m in teacher.get_submodule(st.prefix).modules()}
        state["side"] = lambda module: sides.get(id(module), "")

    for stack in stacks:
        blocks = teacher.get_submodule(stack.prefix)
        neurons[stack.prefix] = [None] * stack.depth
        head_scores[stack.prefix] = [None] * stack.depth
        counts[stack.prefix] = [0.0] * stack.depth
        for index, block in enumerate(blocks):
            if stack is deep and method == "block_influence":  # skip_kl needs its own passes

                def pre(module, args, kwargs, index=index):
                    state[("in", index)] = _hidden_in(args, kwargs)

                def post(module, args, kwargs, output, index=index, side=stack.side):
                    h_in, h_out = state.pop(("in", index)), _first(output)
                    mask = _token_mask(state["batch"], h_in, side).to(h_in.device)
                    cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
                    cos_sum[index] += cos[mask].double().sum().cpu()
                    cos_count[index] += mask.sum().item()

                handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(block.register_forward_hook(post, with_kwargs=True))
            if width:
                parts = mlp_parts(block, hidden)
                if parts is not None:
                    down = block.get_submodule(parts[2][0])

                    def mlp_in(module, args, prefix=stack.prefix, index=index, side=stack.side):
                        x = args[0]
                        mask = _token_mask(state["batch"], x, side).to(x.device)
                        total = x.float().abs()[mask].sum(0).cpu()
                        old = neurons[prefix][index]
                        neurons[prefix][index] = total if old is None else old + total
                        counts[prefix][index] += float(mask.sum())

                    handles.append(down.register_forward_pre_hook(mlp_in))
            if heads:
                attention = attention_parts(block)
                if attention is not None:
                    out_proj = block.get_submodule(attention["o_proj"])
                    head_dim = _head_dim(teacher.config)

                    def attn_in(module, args, prefix=stack.prefix, index=index, side=stack.side, hd=head_dim):
                        x = args[0]
                        mask = _token_mask(state["batch"], x, side).to(x.device)
                        norms = x.float().unflatten(-1, (-1, hd)).norm(dim=-1)[mask].sum(0).cpu()
                        old = head_scores[prefix][index]
                        head_scores[prefix][index] = norms if old is None else old + norms

                    handles.append(out_proj.register_forward_pre_hook(attn_in))
    try:
        for batch in batches if handles else ():
            state["batch"] = batch
            teacher(**{k: v.to(device) for k, v in batch.items()})
    finally:
        for h in handles:
            h.remove()
        state.clear()

    if method == "block_influence":
        scores = (1 - cos_sum / cos_count.clamp(min=1)).tolist()
    else:
        scores = _skip_kl(teacher, deep, batches, device)
    for prefix, per_layer in neurons.items():
        neurons[prefix] = [
            None if s is None else s / max(counts[prefix][i], 1.0) for i, s in enumerate(per_layer)
        ]
    teacher.train(was_training)
    return Importance(
        method, {deep.prefix: scores}, neurons, head_scores, n_examples, channel_score if channels else None
    )


def _skip_kl(teacher: nn.Module, deep: Stack, batches: list[dict], device: Any) -> list[float]:
    """Per block: the mean KL from the whole teacher's outputs to the teacher's without that block
    (over the target tokens of token-level tasks, the examples of classification). Outputs read
    through a sigmoid each (multi-label) are compared label by label, one output (regression) by
    squared error. One batch's outputs are held at a time."""
    blocks = teacher.get_submodule(deep.prefix)
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    count = 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items()}
        reference = teacher(**inputs).logits
        divergence = _divergence(teacher.config, reference.shape[-1])
        mask = _token_mask(batch, reference, "decoder") if reference.dim() == 3 else None
        for index, block in enumerate(blocks):
            held: dict[str, torch.Tensor] = {}

            def pre(module, args, kwargs, held=held):
                held["in"] = _hidden_in(args, kwargs)

            def skip(module, args, kwargs, output, held=held):
                h = held.pop("in")
                return (h, *output[1:]) if isinstance(output, tuple) else h

            handles = [
                block.register_forward_pre_hook(pre, with_kwargs=True),
                block.register_forward_hook(skip, with_kwargs=True),
            ]
            try:
                logits = teacher(**inputs).logits
            finally:
                for h in handles:
                    h.remove()
            kl, n = _kl(reference, logits, None if mask is None else mask.to(logits.device), divergence)
            totals[index] += kl.double().cpu()
        count += int(n)
    return (totals / max(count, 1)).tolist()


def rank_layers(scores: list[float], keep: int) -> list[int]:
    """The ``keep`` highest-scoring layers, in order (ties: the earlier layer)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:keep])


# ----------------------------------------------------------------------------- building


def _head_dim(config: Any) -> int:
    explicit = getattr(config, "head_dim", None)
    return explicit if explicit else config.hidden_size // config.num_attention_heads


def check_prunable(teacher: nn.Module, spec: Any, key: str = "student.prune") -> None:
    """Refuse, in one line, a target this teacher cannot be pruned to."""
    config = teacher.config
    stacks = stacks_of(teacher)
    deep = depth_stack(stacks)
    size_from(spec.layers, deep.depth, f"{key}.layers")
    hidden = hidden_of(config)
    if spec.intermediate != 1:
        for stack in stacks:
            parts = mlp_parts(teacher.get_submodule(stack.prefix)[0], hidden)
            if parts is None:
                raise DistillError(
                    f"{key}.intermediate: cannot find the MLP of a {type(teacher).__name__} block (its width "
                    "equals the hidden size, or it has experts); keep it at 1.0"
                )
            size_from(spec.intermediate, parts[0], f"{key}.intermediate")
            _ffn_field(config, stack.side, parts[0], key)
    free = None
    if spec.heads != 1:
        if getattr(config, "is_encoder_decoder", False):
            raise DistillError(
                f"{key}.heads: the heads of an encoder-decoder ({type(teacher).__name__}) are not pruned "
                "(its encoder, decoder and cross-attention share one head count); keep it at 1.0"
            )
        block = teacher.get_submodule(deep.prefix)[0]
        free = attention_parts(block) is not None and _head_size_free(teacher)
        if not free:
            follow = (
                f"prune {key}.hidden, which takes whole heads with it, or keep"
                if _hidden_prunable(teacher)
                else "keep"
            )
            raise DistillError(
                f"{key}.heads: a {config.model_type} model's head size is not its own setting (it follows the "
                f"hidden size, or the attention is fused or shares one position bias), so heads cannot go "
                f"alone; {follow} it at 1.0"
            )
        size_from(spec.heads, _groups(config), f"{key}.heads (key/value groups)")
    if spec.hidden != 1:
        residual_dims(teacher, key)
        _hidden_field(config, key)
        free = _head_size_free(teacher) if free is None else free
        _hidden_target(spec.hidden, config, free, key)


def _groups(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _head_size_free(teacher: nn.Module) -> bool:
    """Whether the family's attention takes its head size from ``config.head_dim`` (Llama, Qwen2,
    Mistral, ...), so that heads and the hidden size can change apart: a model of the class built
    on the meta device (no memory, no weights) with ``head_dim`` doubled has query projections
    twice as wide. BERT's, BART's and T5's do not."""
    config = copy.deepcopy(teacher.config)
    head_dim = _head_dim(config)
    config.head_dim = head_dim * 2
    with torch.device("meta"):
        trial = type(teacher)(config)
    block = trial.get_submodule(depth_stack(stacks_of(trial)).prefix)[0]
    parts = attention_parts(block)
    if parts is None:
        return False
    q = block.get_submodule(parts["q_proj"])
    return q.out_features == config.num_attention_heads * head_dim * 2


def _hidden_prunable(teacher: nn.Module) -> bool:
    try:
        residual_dims(teacher, "")
    except DistillError:
        return False
    return True


def _hidden_target(target: float, config: Any, free: bool, key: str) -> tuple[int, int | None]:
    """(hidden width kept, key/value groups kept or None). Where the head size follows the hidden
    size (BERT and its kin), whole heads go with the channels: the width is a whole number of
    (groups of) heads."""
    hidden = hidden_of(config)
    if free:
        return size_from(target, hidden, f"{key}.hidden"), None
    groups = _groups(config)
    unit = hidden // groups  # channels per key/value group
    if target > 1 and float(target).is_integer() and target % unit:
        raise DistillError(
            f"{key}.hidden: a {config.model_type} model's heads follow its hidden size, so the width "
            f"must be a multiple of {unit} (its head size x query heads per key/value group), got {int(target)}"
        )
    n_groups = size_from(target if target <= 1 else target / unit, groups, f"{key}.hidden (in heads)")
    return n_groups * unit, n_groups


def _is_norm(module: nn.Module, hidden: int) -> bool:
    """A LayerNorm / RMSNorm over the hidden channels (any family's class)."""
    params = list(module.parameters(recurse=False))
    return (
        "norm" in type(module).__name__.lower()
        and bool(params)
        and all(p.dim() == 1 and p.shape[0] == hidden for p in params)
    )


def _hidden_field(config: Any, key: str) -> str:
    fields = config.to_dict()
    for name in HIDDEN_FIELDS:
        if fields.get(name) == hidden_of(config):
            return name
    raise DistillError(
        f"{key}.hidden: cannot tell which field of the {config.model_type} config holds the hidden size"
    )


def residual_dims(model: nn.Module, key: str) -> dict[str, list[int]]:
    """Parameter name -> its dims that index the hidden channels (the residual stream): the
    embeddings' width, every norm, the input of every linear layer that reads the stream and the
    output of every one that writes it, the heads included. The attention's head space (the
    outputs of q/k/v, the input of o) is not the stream even where it is as wide. Refuses, in one
    line, a family where some hidden-sized dim cannot be told apart."""
    config = model.config
    name = type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise DistillError(
            f"{key}.hidden: pruning the hidden size of an encoder-decoder ({name}) is not supported "
            "(its encoder, decoder and cross-attention share it); prune layers and intermediate instead"
        )
    hidden = hidden_of(config)
    head_space: dict[str, str] = {}  # module -> the side of it that is head space
    stack = depth_stack(stacks_of(model))
    for i, block in enumerate(model.get_submodule(stack.prefix)):
        parts = attention_parts(block)
        if parts is None:
            raise DistillError(
                f"{key}.hidden: a {name} block has no separate q/k/v/o projections (fused attention), "
                "so its hidden size cannot be pruned; keep it at 1.0"
            )
        for role in ("q_proj", "k_proj", "v_proj"):
            head_space[f"{stack.prefix}.{i}.{parts[role]}"] = "out"
        head_space[f"{stack.prefix}.{i}.{parts['o_proj']}"] = "in"
    dims: dict[str, list[int]] = {}
    covered: dict[str, set[int]] = {}  # head-space dims, told apart but not the stream
    for module_name, module in model.named_modules():
        own = f"{module_name}." if module_name else ""
        if isinstance(module, nn.Embedding):
            if module.embedding_dim == hidden:
                dims[f"{own}weight"] = [1]
        elif (shape := linear_dims(module)) is not None:
            conv = isinstance(module, Conv1D)
            in_dim, out_dim = (0, 1) if conv else (1, 0)
            space = head_space.get(module_name)
            weight = dims.setdefault(f"{own}weight", [])
            if shape[0] == hidden:
                (
                    covered.setdefault(f"{own}weight", set()).add(in_dim)
                    if space == "in"
                    else weight.append(in_dim)
                )
            if shape[1] == hidden:
                if space == "out":
                    covered.setdefault(f"{own}weight", set()).add(out_dim)
                    covered.setdefault(f"{own}bias", set()).add(0)
                else:
                    weight.append(out_dim)
                    if getattr(module, "bias", None) is not None:
                        dims[f"{own}bias"] = [0]
        elif _is_norm(module, hidden):
            for param_name, _ in module.named_parameters(recurse=False):
                dims[f"{own}{param_name}"] = [0]
    dims = {k: v for k, v in dims.items() if v}
    for param_name, param in model.named_parameters(remove_duplicate=False):
        for d, size in enumerate(param.shape):
            if (
                size == hidden
                and d not in dims.get(param_name, [])
                and d not in covered.get(param_name, set())
            ):
                raise DistillError(
                    f"{key}.hidden: cannot tell whether dim {d} of {param_name} in a {name} is the hidden "
                    "channels, so its hidden size cannot be pruned; keep it at 1.0"
                )
    return dims


def _ffn_field(config: Any, side: str, width: int, key: str) -> str:
    fields = config.to_dict()
    for name in FFN_FIELDS[side]:
        if name in fields and (fields[name] == width or (name == "n_inner" and fields[name] is None)):
            return name
    raise DistillError(
        f"{key}.intermediate: cannot tell which field of the {config.model_type} config holds the MLP width"
    )


def prune(teacher: nn.Module, spec: Any, importance: Importance | None) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher pruned to ``spec`` (student.prune) by ``importance``; ``None`` keeps the first
    units (a structural trial: what ``validate`` builds). Returns the student and what was kept."""
    from distill.modeling import per_layer_fields

    check_prunable(teacher, spec)
    config = copy.deepcopy(teacher.config)
    stacks = stacks_of(teacher)
    deep = depth_stack(stacks)
    hidden = hidden_of(config)
    n_keep = size_from(spec.layers, deep.depth, "student.prune.layers")
    scores = (
        importance.layers[deep.prefix] if importance else [float(deep.depth - i) for i in range(deep.depth)]
    )
    kept_layers = rank_layers(scores, n_keep)
    slices: dict[str, list[tuple[int, torch.Tensor]]] = {}  # teacher parameter -> (dim, kept indices)
    kept: dict[str, Any] = {"layers": kept_layers}

    def cut(name: str, dim: int, index: torch.Tensor) -> None:
        slices.setdefault(name, []).append((dim, index))

    def cut_linear(block_path: str, module: nn.Module, side: str, index: torch.Tensor) -> None:
        """``side`` = "out" keeps output features, "in" keeps input features."""
        conv = isinstance(module, Conv1D)
        dim = {("out", False): 0, ("in", False): 1, ("out", True): 1, ("in", True): 0}[(side, conv)]
        cut(f"{block_path}.weight", dim, index)
        if side == "out" and getattr(module, "bias", None) is not None:
            cut(f"{block_path}.bias", 0, index)

    if spec.intermediate != 1:
        kept["intermediate"] = {}
        widths = {}
        for stack in stacks:  # every field found before any is changed (T5's d_ff serves both stacks)
            width = mlp_parts(teacher.get_submodule(stack.prefix)[0], hidden)[0]
            widths[stack.prefix] = (width, _ffn_field(config, stack.side, width, "student.prune"))
        for stack in stacks:
            blocks = teacher.get_submodule(stack.prefix)
            width, ffn_field = widths[stack.prefix]
            n = size_from(spec.intermediate, width, "student.prune.intermediate")
            setattr(config, ffn_field, n)
            for i, block in enumerate(blocks):
                _, ups, downs = mlp_parts(block, hidden)
                score = importance.neurons[stack.prefix][i] if importance else None
                index = _top(score, width, n)
                for name in ups:
                    cut_linear(f"{stack.prefix}.{i}.{name}", block.get_submodule(name), "out", index)
                cut_linear(f"{stack.prefix}.{i}.{downs[0]}", block.get_submodule(downs[0]), "in", index)
            kept["intermediate"][stack.side or "layers"] = n
    head_dim = _head_dim(config)
    groups = _groups(config) if hasattr(config, "num_attention_heads") else 0
    n_groups = size_from(spec.heads, groups, "student.prune.heads") if spec.heads != 1 else None
    if spec.hidden != 1:
        free = _head_size_free(teacher)
        n_hidden, tied_groups = _hidden_target(spec.hidden, config, free, "student.prune")
        n_groups = tied_groups or n_groups
        if free:
            config.head_dim = head_dim  # the head size stays as the hidden size changes
        index = _top(importance.hidden if importance else None, hidden, n_hidden)
        for name, ds in residual_dims(teacher, "student.prune").items():
            for d in ds:
                cut(name, d, index)
        setattr(config, _hidden_field(config, "student.prune"), n_hidden)
        kept["hidden"] = n_hidden
    if n_groups is not None:
        heads = config.num_attention_heads
        per_group = heads // groups
        if spec.heads != 1:
            config.head_dim = head_dim
        config.num_attention_heads = n_groups * per_group
        if getattr(config, "num_key_value_heads", None):
            config.num_key_value_heads = n_groups
        blocks = teacher.get_submodule(deep.prefix)
        for i, block in enumerate(blocks):
            parts = attention_parts(block)
            score = importance.heads[deep.prefix][i] if importance else None
            group_score = None if score is None else score.view(groups, per_group).sum(-1)
            kept_groups = _top(group_score, groups, n_groups)
            q_heads = (kept_groups[:, None] * per_group + torch.arange(per_group)).flatten()
            q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
            kv_rows = (kept_groups[:, None] * head_dim + torch.arange(head_dim)).flatten()
            base = f"{deep.prefix}.{i}"
            for role, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                cut_linear(f"{base}.{parts[role]}", block.get_submodule(parts[role]), "out", rows)
            cut_linear(f"{base}.{parts['o_proj']}", block.get_submodule(parts["o_proj"]), "in", q_rows)
        kept["heads"] = config.num_attention_heads
        kept["key_value_heads"] = n_groups

    # Depth: the kept blocks of the pruned stack; per-layer settings follow them.
    if getattr(config, "is_encoder_decoder", False):
        from distill.modeling import _SEQ2SEQ_DEPTH_FIELDS

        for _, dec in _SEQ2SEQ_DEPTH_FIELDS:
            if isinstance(getattr(config, dec, None), int):
                setattr(config, dec, n_keep)
                break
    else:
        for key in per_layer_fields(config, deep.depth):
            setattr(config, key, [getattr(config, key)[i] for i in kept_layers])
        config.num_hidden_layers = n_keep
    student = _copy_pruned(teacher, config, {deep.prefix: kept_layers}, slices)
    return student, kept


def _top(score: torch.Tensor | None, full: int, n: int) -> torch.Tensor:
    """Indices of the ``n`` highest scores, in increasing order (no score: the first ``n``)."""
    if score is None:
        return torch.arange(n)
    order = sorted(range(full), key=lambda i: (-float(score[i]), i))
    return torch.tensor(sorted(order[:n]), dtype=torch.long)


def _copy_pruned(
    teacher: nn.Module, config: Any, stacks: dict[str, list[int]], slices: dict[str, list]
) -> nn.Module:
    student = type(teacher)(config)
    patterns = {prefix: re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$") for prefix in stacks}
    teacher_state = teacher.state_dict()
    state = {}
    expected = student.state_dict()
    for key, target in expected.items():
        source = key
        for prefix, pattern in patterns.items():
            match = pattern.match(key)
            if match:
                source = f"{prefix}.{stacks[prefix][int(match.group(1))]}.{match.group(2)}"
                if source not in teacher_state:  # T5's relative bias lives in block 0 only
                    source = f"{prefix}.0.{match.group(2)}"
                break
        value = teacher_state[source].detach()
        for dim, index in slices.get(source, []):
            value = value.index_select(dim, index.to(value.device))
        if value.shape != target.shape:
            raise DistillError(
                f"student.init=prune: {key} would have shape {tuple(value.shape)} but the pruned "
                f"{type(student).__name__} expects {tuple(target.shape)}; this family cannot be pruned so"
            )
        state[key] = value.clone()
    student.load_state_dict(state, strict=True)
    return student
