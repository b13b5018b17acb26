"""Which teacher layers to copy: evenly spaced, or ranked by `skip_kl` or `block_influence`.

    python benchmarks/layer_choice.py TEACHER_FOLDER [--recipe quickstart] [--seeds 1] [--out DIR]
        [key=value ...]

TEACHER_FOLDER is a fine-tuned teacher (e.g. the `teacher/` folder of a quickstart run). For each
layer choice and seed, the recipe runs with that teacher as it is (no fine-tuning), the student
copied with `student.layers` evenly spaced or `auto` under each ranking, and no baseline; the
script prints, from each run's report, the layers copied and the student's test score (mean ± sd
over the seeds) beside the teacher's. Extra key=value overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHOICES = {
    "evenly spaced": [],
    "auto, skip_kl": ["student.layers=auto", "student.prune.depth_importance=skip_kl"],
    "auto, block_influence": ["student.layers=auto", "student.prune.depth_importance=block_influence"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("teacher")
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default="layer_choice_runs")
    args, overrides = parser.parse_known_args()
    rows = {}
    for name, extra in CHOICES.items():
        scores, layers, teacher_score = [], None, None
        for seed in range(1, args.seeds + 1):
            out = Path(args.out) / f"{name.replace(', ', '_').replace(' ', '_')}_seed{seed}"
            cmd = [
                *(sys.executable, "-m", "distill.cli", "run", args.recipe),
                f"teacher.name_or_path={args.teacher}",
                "teacher.finetune.enabled=false",
                "train.baseline=false",
                "eval.latency=false",
                f"train.seed={seed}",
                f"output.dir={out}",
                *extra,
                *overrides,
            ]
            if not (out / "report.json").exists():
                subprocess.run(cmd, check=True)
            report = json.loads((out / "report.json").read_text())
            results = json.loads((out / "results.json").read_text())
            primary = report["primary_metric"]
            by_name = {m["name"]: m for m in report["models"]}
            scores.append(by_name["student"]["metrics"][primary])
            teacher_score = by_name["teacher"]["metrics"][primary]
            layers = results["student_layers_from_teacher"]
        rows[name] = (layers, scores, teacher_score, primary)
    for name, (layers, scores, teacher_score, primary) in rows.items():
        spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
        print(
            f"{name:24s} layers {layers}  student {primary} {statistics.fmean(scores):.4f}{spread}"
            f"  (teacher {teacher_score:.4f}, kept {statistics.fmean(scores) / teacher_score:.1%})"
        )


if __name__ == "__main__":
    main()
