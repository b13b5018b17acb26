"""The report's three forms (``report.json``, ``report.md``, ``report.png``) and the model cards.

Everything here reads the report dictionary built by :func:`distill.evaluation.evaluate_models`;
nothing is measured here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distill import atomic

REPORT_FILES = ("report.json", "report.md", "report.png")
MARKERS = {"teacher": "*", "student": "o", "baseline": "X"}
COLORS = {"teacher": "#1f4e79", "student": "#2e8b57", "baseline": "#b03a2e"}


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Write report.json, report.md and report.png into ``out`` as a set: all three are rendered
    under temporary names first and then renamed into place one after the other, so a failure while
    rendering leaves the previous report whole."""
    paths = [out / name for name in REPORT_FILES]
    with atomic.disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        tmp = [p.with_name(f"{atomic.PARTIAL}{p.name}") for p in paths]
        tmp[0].write_text(atomic.dumps(report), encoding="utf-8")
        tmp[1].write_text(markdown(report), encoding="utf-8")
        plot(report, tmp[2])
        for t in tmp:
            atomic.sync_file(t)
        for t, p in zip(tmp, paths, strict=True):
            os.replace(t, p)
        atomic.sync_dir(out)
    return paths


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(cell: dict[str, Any]) -> str:
    """Median ms per batch, and ± half the spread of the timed passes (when there were several)."""
    text = _fmt(cell.get("ms_per_batch"), 2)
    spread = cell.get("spread")
    return text if not spread else f"{text} ±{50 * spread:.0f}%"


def latency_warning(report: dict[str, Any]) -> str | None:
    """One sentence when the timings cannot be trusted: passes that spread too widely."""
    settings = report.get("latency_settings")
    if not settings or not settings.get("noisy"):
        return None
    worst = max(
        (cell["spread"], m["name"])
        for m in report["models"]
        for mode in (m.get("latency") or {}).values()
        for cell in mode.values()
    )
    load = (settings.get("load_average") or [None])[0]
    busy = f"; load average {load:.1f} on {settings['cpu_count']} cores" if load is not None else ""
    return (
        f"Latency is noisy: the timed passes of {', '.join(settings['noisy'])} differ by up to "
        f"{worst[0]:.0%} of their median (more than {settings['noisy_threshold']:.0%}{busy}); the "
        "speed-ups may be off. Measure again on a quiet machine, or with more eval.latency_repeats."
    )


def _main_mode(report: dict[str, Any]) -> str | None:
    settings = report.get("latency_settings")
    return settings["modes"][-1] if settings else None  # translation: the beam search, as evaluated


def table(report: dict[str, Any]) -> str:
    """One markdown table: a row per model, then mean ± spread per role with several models."""
    metrics = report["metrics"]
    primary = report["primary_metric"]
    settings = report.get("latency_settings")
    header = ["model", "role", *metrics, f"kept ({primary})", "params (M)", "size (MB)", "precision"]
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
            m.get("precision", "-"),
        ]
        if settings:
            lat = m.get("latency") or {}
            row += [_ms(lat.get(mode, {}).get(key, {})) for mode, key in timing]
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
    out = [
        f"`kept` is the model's {report['primary_metric']} as a share of the teacher's. `precision` is "
        "what each model computed in for every figure here: its weights' dtype, under the run's "
        "mixed precision (autocast) when there is one."
    ]
    if settings:
        out.append(
            f"Latency: median of {settings['repeats']} timed passes over {settings['examples']} examples "
            f"after {settings['warmup_passes']} warm-up pass, {settings['threads']} threads, every model on the "
            "same batches, the models taking turns within each pass; ms per batch (ms per example at "
            "batch 1), ± half the spread between the fastest and slowest pass. Speed-up is the teacher's "
            "time over the model's; throughput is examples per second at the largest batch"
            + (f", {_main_mode(report)}" if len(settings["modes"]) > 1 else "")
            + "."
        )
        warning = latency_warning(report)
        if warning:
            out.append(f"**Warning:** {warning}")
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


def headline(report: dict[str, Any]) -> str:
    """The result in one line, for the figure's title: what the student (the mean of several)
    keeps of the teacher, at what speed, and what it gains over the no-teacher baseline."""
    primary = report["primary_metric"]
    floats = [m for m in report["models"] if not m.get("quantized")]  # int8 rows aside
    teacher = next(m for m in floats if m["role"] == "teacher")
    students = [m for m in floats if m["role"] == "student"]
    if not students:
        return f"teacher: {primary} {teacher['metrics'][primary]:.4f}"

    def mean(rows: list[dict[str, Any]]) -> float:
        return sum(m["metrics"][primary] for m in rows) / len(rows)

    score = mean(students)
    who = "student" if len(students) == 1 else f"the {len(students)} students"
    base = teacher["metrics"][primary]
    text = (
        f"{who} {'keeps' if len(students) == 1 else 'keep'} {score / base:.1%} of the teacher's {primary}"
        if base
        else f"{who}: {primary} {score:.4f}"
    )
    mode = _main_mode(report)
    speeds = [m["speedup"][mode] for m in students if mode and m.get("speedup")]
    if speeds:
        key = "batch_1" if "batch_1" in speeds[0] else next(iter(speeds[0]))
        text += f" at {sum(s[key] for s in speeds) / len(speeds):.1f}x its speed ({key.replace('_', ' ')})"
    baselines = [m for m in floats if m["role"] == "baseline"]
    if baselines:
        scale = 100 if max(m["metrics"][primary] for m in report["models"]) <= 1 else 1
        gap = (score - mean(baselines)) * scale
        text += f"; {gap:+.2f} points over the no-teacher baseline"
    return text


def figure(report: dict[str, Any]) -> Any:
    """Quality (the primary metric) against latency per example, a panel per timed batch size
    (or against parameters when latency was not measured). Each model is a marker with the
    spread of its timed passes; several models of one role add their mean ± sd. The quality axis
    starts at 0, so a small gap looks small; the title says the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report["primary_metric"]
    mode = _main_mode(report)
    settings = report.get("latency_settings")
    keys = [f"batch_{bs}" for bs in settings["batch_sizes"]] if settings else [None]
    fig, axes = plt.subplots(
        1, len(keys), figsize=(5.2 * len(keys), 4.6), dpi=120, sharey=True, squeeze=False
    )
    top = max(m["metrics"][primary] for m in report["models"])
    for ax, key in zip(axes[0], keys, strict=True):
        for role, quantized in [(r, q) for r in ("teacher", "student", "baseline") for q in (False, True)]:
            rows = [
                m for m in report["models"] if m["role"] == role and bool(m.get("quantized")) == quantized
            ]
            if key is not None:
                rows = [m for m in rows if key in (m.get("latency") or {}).get(mode, {})]
            if not rows:
                continue
            if key is not None:
                cells = [m["latency"][mode][key] for m in rows]
                xs = [c["ms_per_example"] for c in cells]
                xerr = [c["ms_per_example"] * (c.get("spread") or 0.0) / 2 for c in cells]
            else:
                xs, xerr = [m["parameters"] / 1e6 for m in rows], None
            ys = [m["metrics"][primary] for m in rows]
            ax.errorbar(
                xs,
                ys,
                xerr=xerr,
                fmt=MARKERS[role],
                markersize=8,
                color=COLORS[role],
                markerfacecolor="none" if quantized else COLORS[role],  # int8 rows: hollow
                label=f"{role} (int8)" if quantized else role,
                capsize=3,
                zorder=3,
                linestyle="none",
            )
            for x, y, m in zip(xs, ys, rows, strict=True):
                ax.annotate(m["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
            group = next((g for g in report.get("groups", []) if g["role"] == role), None)
            if group is not None and not quantized:
                ax.errorbar(
                    [sum(xs) / len(xs)],
                    [group["mean"][primary]],
                    yerr=[group["std"][primary]],
                    fmt="_",
                    markersize=22,
                    color=COLORS[role],
                    capsize=6,
                    elinewidth=2,
                    zorder=4,
                    label=f"{role} mean ± sd ({group['n']})",
                )
        if key is not None:
            ax.set_xlabel(
                f"ms per example at {key.replace('_', ' ')} ({mode}, {report['machine']['device']})"
            )
        else:
            ax.set_xlabel("parameters (M); latency not measured")
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"{primary} ({report['split']} split)")
    axes[0][0].set_ylim(0, top * 1.08 if top > 0 else 1)
    axes[0][-1].legend(loc="lower right", fontsize=7)
    fig.suptitle(headline(report), fontsize=10)
    fig.tight_layout()
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """``report.png``: :func:`figure`, saved."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    try:
        fig.savefig(path, format="png")
    finally:
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
    warning = latency_warning(report)
    if warning:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
