"""The report's three forms (``report.json``, ``report.md``, ``report.png``) and the model cards.

Everything here reads the report dictionary built by :func:`distill.evaluation.evaluate_models`;
nothing is measured here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPORT_FILES = ("report.json", "report.md", "report.png")
MARKERS = {"teacher": "*", "student": "o", "baseline": "X"}
COLORS = {"teacher": "#1f4e79", "student": "#2e8b57", "baseline": "#b03a2e"}


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and report.png into ``out`` (each written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in REPORT_FILES]
    _write_text(paths[0], json.dumps(report, indent=2) + "\n")
    _write_text(paths[1], markdown(report))
    tmp = paths[2].with_name(".report.tmp.png")
    plot(report, tmp)
    os.replace(tmp, paths[2])
    return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _main_mode(report: dict[str, Any]) -> str | None:
    settings = report.get("latency_settings")
    return settings["modes"][-1] if settings else None  # translation: the beam search, as evaluated


def table(report: dict[str, Any]) -> str:
    """One markdown table: a row per model, then mean ± spread per role with several models."""
    metrics = report["metrics"]
    primary = report["primary_metric"]
    settings = report.get("latency_settings")
    header = ["model", "role", *metrics, f"kept ({primary})", "params (M)", "size (MB)"]
    timing: list[tuple[str, str]] = []
    if settings:
        for mode in settings["modes"]:
            for bs in settings["batch_sizes"]:
                timing.append((mode, f"batch_{bs}"))
        multi = len(settings["modes"]) > 1
        for mode, key in timing:
            label = key.replace("batch_", "b")
            prefix = f"{mode} " if multi else ""
            header.append(f"{prefix}ms/{'example' if label == 'b1' else 'batch'} ({label})")
        for mode, key in timing:
            prefix = f"{mode} " if multi else ""
            header.append(f"{prefix}speed-up ({key.replace('batch_', 'b')})")
        header.append("throughput (ex/s)")
    rows = []
    for m in report["models"]:
        row = [
            m["name"],
            m["role"],
            *(_fmt(m["metrics"][k]) for k in metrics),
            "-" if m["retained"][primary] is None else f"{m['retained'][primary]:.1%}",
            f"{m['parameters'] / 1e6:.2f}",
            _fmt(m.get("size_mb"), 1),
        ]
        if settings:
            lat = m.get("latency") or {}
            row += [_fmt(lat.get(mode, {}).get(key, {}).get("ms_per_batch"), 2) for mode, key in timing]
            row += [f"{m['speedup'][mode][key]:.2f}x" if m.get("speedup") else "-" for mode, key in timing]
            row.append(_fmt((m.get("throughput") or {}).get(_main_mode(report)), 1))
        rows.append(row)
    for g in report.get("groups", []):
        row = [f"mean ± sd of {g['n']}", g["role"]]
        row += [f"{g['mean'][k]:.4f} ± {g['std'][k]:.4f}" for k in metrics]
        rows.append(row + [""] * (len(header) - len(row)))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def notes(report: dict[str, Any]) -> list[str]:
    """What the table's columns mean and how they were measured."""
    settings = report.get("latency_settings")
    out = [f"`kept` is the model's {report['primary_metric']} as a share of the teacher's."]
    if settings:
        out.append(
            f"Latency: median of {settings['repeats']} timed passes over {settings['examples']} examples "
            f"after {settings['warmup_passes']} warm-up pass, {settings['threads']} threads, every model on the "
            "same batches; ms per batch (ms per example at batch 1). Speed-up is the teacher's time over "
            "the model's; throughput is examples per second at the largest batch"
            + (f", {_main_mode(report)}" if len(settings["modes"]) > 1 else "")
            + "."
        )
    else:
        out.append("Latency was not measured (eval.latency=false).")
    if any(m["role"] == "baseline" for m in report["models"]):
        out.append(
            "The baseline is the same student (same initialisation, data, steps and seed) trained "
            "on the hard labels alone, without the teacher."
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    return "\n".join(
        [
            "# Distillation report",
            "",
            f"Task: {report['task']}. Data: the {report['split']} split, {report['examples']} examples"
            + (f" ({report['recipe']})" if report.get("recipe") else "")
            + f". Machine: {machine['device']} ({machine['device_name']}), torch {machine['torch']}.",
            "",
            table(report),
            "",
            *notes(report),
            "",
            "![quality vs latency](report.png)",
            "",
        ]
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Quality (the primary metric) against batch-1 latency, one marker per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report["primary_metric"]
    mode = _main_mode(report)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    measured = False
    for role in ("teacher", "student", "baseline"):
        rows = [m for m in report["models"] if m["role"] == role]
        if not rows:
            continue
        if mode is not None:
            xs = [
                m["latency"][mode]["batch_1"]["ms_per_example"]
                if "batch_1" in m["latency"][mode]
                else min(v["ms_per_example"] for v in m["latency"][mode].values())
                for m in rows
            ]
            measured = True
        else:
            xs = [m["parameters"] / 1e6 for m in rows]
        ys = [m["metrics"][primary] for m in rows]
        ax.scatter(xs, ys, marker=MARKERS[role], s=90, color=COLORS[role], label=role, zorder=3)
        for x, y, m in zip(xs, ys, rows, strict=True):
            ax.annotate(m["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if measured:
        batch = "batch 1" if "batch_1" in report["models"][0]["latency"][mode] else "smallest batch"
        ax.set_xlabel(f"latency, ms per example ({mode}, {batch}, {report['machine']['device']})")
    else:
        ax.set_xlabel("parameters (M) — latency not measured")
    ax.set_ylabel(f"{primary} ({report['split']} split)")
    ax.set_title("Quality vs latency: teacher, students, baselines")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def console_summary(report: dict[str, Any]) -> str:
    """The table and one sentence per student, for the end of ``distill run`` / ``distill evaluate``."""
    primary = report["primary_metric"]
    teacher = next(m for m in report["models"] if m["role"] == "teacher")
    lines = [table(report)]
    mode = _main_mode(report)
    for m in report["models"]:
        if m["role"] == "teacher":
            continue
        kept = m["retained"][primary]
        sentence = (
            f"{m['name']}: keeps {'-' if kept is None else f'{kept:.1%}'} of the teacher's {primary}, "
            f"{teacher['parameters'] / m['parameters']:.2f}x fewer parameters"
        )
        if mode and m.get("speedup"):
            speed = ", ".join(f"{v:.2f}x at {k.replace('_', ' ')}" for k, v in m["speedup"][mode].items())
            sentence += f", speed-up {speed} ({mode}, {report['machine']['device']})"
        lines.append(sentence)
    return "\n".join(lines)
