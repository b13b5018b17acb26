"""Model cards: a ``README.md`` in each student's folder, saying how it was made and what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.config import RecipeConfig
from distill.report import _main_mode, notes, table
from distill.tasks import TASKS


def hub_id(name_or_path: str) -> str | None:
    """The teacher's hub id for a model card's ``base_model`` (None for local or packaged folders)."""
    if not name_or_path or name_or_path.startswith(("pkg:", "memory:")) or Path(name_or_path).exists():
        return None
    return name_or_path


def _named(name_or_path: str) -> str:
    if name_or_path.startswith("memory:"):
        return f"a model passed from Python (`{name_or_path}`)"
    return f"`{name_or_path}`"


def describe_built(built: dict[str, Any]) -> str:
    """One phrase for what pruning (or layers=auto) measured and kept."""
    importance = built.get("importance", {})
    pruned = built.get("pruned")
    parts = []
    if pruned:
        parts.append(f"pruned from the teacher: layers {pruned['layers']} kept")
        for side, width in (pruned.get("intermediate") or {}).items():
            where = "" if side == "layers" else f" ({side})"
            parts.append(f"MLP width {width}{where}")
        if "hidden" in pruned:
            parts.append(f"hidden size {pruned['hidden']}")
        if "heads" in pruned:
            groups = pruned["key_value_heads"]
            in_groups = "" if groups == pruned["heads"] else f" in {groups} key/value groups"
            parts.append(f"{pruned['heads']} attention heads{in_groups}")
    if importance:
        scores = next(iter(importance["layer_scores"].values()))
        parts.append(
            f"layers ranked by {importance['depth_method']} on {importance['calibration_examples']} "
            f"training examples (scores {', '.join(f'{x:.4g}' for x in scores)})"
        )
    return "; ".join(parts)


def how_made(
    cfg: RecipeConfig,
    role: str,
    copied: list[int] | None,
    train_examples: int,
    processes: int,
    built: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """The model card's "how it was made" rows, from the resolved recipe."""
    t, s, loss, tr = cfg.teacher, cfg.student, cfg.loss, cfg.train
    if t.architecture:
        teacher = f"trained here from scratch ({t.architecture.get('model_type')}, {t.train.steps} steps)"
    else:
        teacher = _named(t.name_or_path) + (
            f", fine-tuned here for {t.finetune.steps} steps" if t.finetune.enabled else ""
        )
    if s.init == "copy_layers" and TASKS[cfg.task].ENCODER_DECODER:
        encoder = f"encoder layers {s.encoder_layers}" if s.encoder_layers is not None else "whole encoder"
        init = f"copied from the teacher: embeddings, head, {encoder} and decoder layers {copied}"
    elif s.init == "copy_layers":
        init = f"copied from the teacher: embeddings, head and layers {copied}"
    elif s.init == "prune":
        init = describe_built(built or {}) or f"pruned from the teacher: layers {copied} kept"
    elif s.init == "from_config":
        init = f"random, the teacher's config with {s.config_overrides}"
    else:
        init = f"pretrained {_named(s.name_or_path)}"
    if s.init == "copy_layers" and built:
        init += f" ({describe_built(built)})"
    if s.lora.enabled:
        init += (
            f"; trained as LoRA adapters (rank {s.lora.r}, alpha {s.lora.alpha:g}) and the task head, "
            f"then merged (the adapter: {role}_adapter/ beside this folder)"
        )
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


def dataset_id(cfg: RecipeConfig) -> str | None:
    """The hub id of the recipe's data set, for a card's ``datasets`` (None for files, generated
    data, local folders and data passed from Python)."""
    name = cfg.data.dataset
    if not name or name.startswith(("memory:", "pkg:")) or Path(name).exists():
        return None
    return name


def data_name(cfg: RecipeConfig) -> str:
    """The recipe's data, as a card's model-index names it."""
    if cfg.data.dataset.startswith("memory:"):
        return "a data set passed from Python"
    if cfg.data.dataset:
        return cfg.data.dataset + (f" ({cfg.data.dataset_config})" if cfg.data.dataset_config else "")
    if cfg.data.synthetic:
        return f"generated: {cfg.data.synthetic}"
    return ", ".join(f"{Path(v).name}" for v in cfg.data.files.values())


def teacher_license(source: str) -> str | None:
    """The license in the teacher's own model card (a local folder's README.md), if it states one."""
    from huggingface_hub import ModelCard

    from distill.modeling import resolve_path

    try:
        folder = Path(resolve_path(source)) if source else None
    except Exception:  # a hub id or a reference: no local card to read
        return None
    card = folder / "README.md" if folder is not None else None
    if card is None or not card.is_file():
        return None
    try:
        return ModelCard.load(card).data.license
    except Exception:  # a README that is not a model card
        return None


def model_card(
    report: dict[str, Any],
    name: str,
    *,
    how_made: list[tuple[str, str]],
    pipeline_tag: str,
    base_model: str | None,
    usage: str,
    dataset: str | None = None,
    dataset_name: str = "",
    license_name: str | None = None,
) -> str:
    """A model card (README.md) for one student: how it was made and what it measured, with the
    hub's metadata (``huggingface_hub.ModelCardData``: ``base_model``, ``datasets``, ``license``
    and a ``model-index`` holding the measured results)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model = next(m for m in report["models"] if m["name"] == name)
    teacher = next(m for m in report["models"] if m["role"] == "teacher")
    results = [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=dataset or "local",
            dataset_name=dataset_name or "the recipe's data",
            dataset_split=report["split"],
            metric_type=metric,
            metric_value=round(float(model["metrics"][metric]), 6),
        )
        for metric in report["metrics"]
        if model["metrics"].get(metric) is not None
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["distill", "knowledge-distillation"],
        base_model=base_model,
        datasets=[dataset] if dataset else None,
        license=license_name,
        model_name=name,
        eval_results=results or None,
    )
    front = ["---", data.to_yaml(), "---"]
    primary = report["primary_metric"]
    kept = model["retained"][primary]
    summary = (
        f"A {model['parameters'] / 1e6:.1f}M-parameter student distilled by distill from a "
        f"{teacher['parameters'] / 1e6:.1f}M-parameter teacher. On the {report['split']} split "
        f"({report['examples']} examples) it keeps {'-' if kept is None else f'{kept:.1%}'} of the "
        f"teacher's {primary}"
    )
    mode = _main_mode(report)
    if mode and model.get("speedup"):
        key = "batch_1" if "batch_1" in model["speedup"][mode] else next(iter(model["speedup"][mode]))
        summary += f" and runs {model['speedup'][mode][key]:.2f}x faster ({mode}, {key.replace('_', ' ')}, {report['machine']['device']})"
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        summary + ".",
        "",
        "## How it was made",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in how_made),
        "",
        "## Results",
        "",
        table(report),
        "",
        *notes(report),
        "",
        "## Use",
        "",
        "```python",
        usage,
        "```",
        "",
        "## Limitations",
        "",
        f"The numbers above were measured on the {report['split']} split of the recipe's data only; "
        "quality on other data can differ, and the student inherits the teacher's errors and biases. "
        "Latency depends on the machine, threads and batch size: measure on your own hardware.",
        "",
    ]
    return str(ModelCard("\n".join(lines)))
