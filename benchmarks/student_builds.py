"""How the student is built, and what distillation adds to each build, at comparable latency.

    python benchmarks/student_builds.py TEACHER_FOLDER [--recipe quickstart] [--seeds 3]
        [--out DIR] [--variant NAME=key=value,key=value ...] [key=value ...]

TEACHER_FOLDER is a fine-tuned teacher (the `teacher/` folder of a run of the recipe). Each
build below runs the recipe with that teacher as it is (no fine-tuning) for every seed
(`train.seed` 1..N), the student trained with the teacher and the no-teacher baseline trained from
the same initialisation (`train.baseline: true`), both with the recipe's budget. The speed-ups are
measured side by side with the teacher in the first seed's report (the builds' shapes do not
depend on the seed). It prints, per build: parameters, speed-up at each latency batch size, the
student's and the baseline's test score (mean ± sd over the seeds), what distillation adds
(student - baseline, mean ± sd of the paired differences) and the share of the teacher's score kept.

The default builds are sized for the quickstart's MiniLM-L6 teacher (6 layers, 384 channels in 12
heads, MLP 1536) so that each runs about 3x faster than the teacher at batch 1 on a 2-core CPU:
two layers evenly spaced (the recipe's default), two layers chosen by `skip_kl`, all six layers
with a quarter of the channels (3 heads) and half the MLP, and three layers with three quarters of
the channels and half the MLP. `--variant` replaces them. Extra key=value overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BUILDS = {
    "2 layers, evenly spaced": ["student.init=copy_layers", "student.num_layers=2"],
    "2 layers by skip_kl": ["student.init=copy_layers", "student.num_layers=2", "student.layers=auto"],
    "width: 6 layers, hidden 1/4, MLP 1/2": [
        "student.init=prune",
        "student.prune.layers=1.0",
        "student.prune.hidden=0.25",
        "student.prune.intermediate=0.5",
    ],
    "depth + width: 3 layers, hidden 3/4, MLP 1/2": [
        "student.init=prune",
        "student.prune.layers=3",
        "student.prune.hidden=0.75",
        "student.prune.intermediate=0.5",
    ],
}


def mean_sd(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher")
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="student_builds_runs")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value")
    args, overrides = parser.parse_known_args()
    builds = BUILDS
    if args.variant:
        builds = {}
        for spec in args.variant:
            name, _, keys = spec.partition("=")
            builds[name] = [k for k in keys.split(",") if k]
    runs = Path(args.out)
    rows = []
    seed1: dict[str, Path] = {}  # build -> its first seed's student folder
    for name, extra in builds.items():
        students, baselines = [], []
        for seed in range(1, args.seeds + 1):
            out = runs / f"{folder_name(name)}_seed{seed}"
            cmd = [
                *(sys.executable, "-m", "distill.cli", "run", args.recipe),
                f"teacher.name_or_path={args.teacher}",
                "teacher.finetune.enabled=false",
                "train.baseline=true",
                "eval.latency=false",  # measured below: every build side by side in one report
                f"train.seed={seed}",
                f"output.dir={out}",
                *extra,
                *overrides,
            ]
            if not (out / "complete.json").exists():
                subprocess.run([*cmd, *(["--resume"] if (out / "config.yaml").exists() else [])], check=True)
            report = json.loads((out / "report.json").read_text())
            primary = report["primary_metric"]
            by_name = {m["name"]: m for m in report["models"]}
            students.append(by_name["student"]["metrics"][primary])
            baselines.append(by_name["baseline"]["metrics"][primary])
            teacher_score = by_name["teacher"]["metrics"][primary]
            if seed == 1:
                seed1[name] = out / "student"
                params = by_name["student"]["parameters"]
        rows.append((name, params, students, baselines, teacher_score, primary))

    # The speed-ups: the teacher and every build's first-seed student, side by side in one report.
    timed = runs / "latency"
    if not (timed / "report.json").exists():
        subprocess.run(
            [
                *(sys.executable, "-m", "distill.cli", "evaluate", args.recipe, "--teacher", args.teacher),
                *(x for path in seed1.values() for x in ("--student", str(path))),
                *("--out", str(timed), f"teacher.name_or_path={args.teacher}"),
                *("teacher.finetune.enabled=false", "eval.latency=true", *overrides),
            ],
            check=True,
        )
    timing = {m["source"]: m for m in json.loads((timed / "report.json").read_text())["models"]}

    name, _, _, _, teacher_score, primary = rows[0]
    print(f"{args.recipe}: {args.seeds} seed(s); teacher {primary} {teacher_score:.4f}")
    print("| build | parameters | speed-up (batch size) | student | baseline | distillation adds | kept |")
    print("|---|---|---|---|---|---|---|")
    for name, params, students, baselines, teacher_score, _ in rows:
        speed = timing[str(seed1[name])]["speedup"]["forward"]
        speeds = ", ".join(f"{k.split('_')[-1]}: {v:.2f}x" for k, v in speed.items())
        gains = [(s - b) * 100 for s, b in zip(students, baselines, strict=True)]
        spread = f" ± {statistics.stdev(gains):.2f}" if len(gains) > 1 else ""
        print(
            f"| {name} | {params / 1e6:.1f}M | {speeds} | {mean_sd(students)} | {mean_sd(baselines)} "
            f"| {statistics.fmean(gains):+.2f}{spread} pts | {statistics.fmean(students) / teacher_score:.1%} |"
        )


if __name__ == "__main__":
    main()
