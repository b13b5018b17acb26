"""How the student is built, and what distillation adds to each build, at comparable latency.

    python benchmarks/student_builds.py TEACHER [--recipe quickstart] [--seeds 3] [--from-seed 1]
        [--out DIR] [--variant NAME=key=value,key=value ...] [key=value ...]

TEACHER is either a fine-tuned teacher (the `teacher/` folder of a run of a recipe that fine-tunes
a pretrained model, as the quickstart does), used through `teacher.name_or_path` with its
fine-tuning switched off, or a run folder of a recipe that trains its teacher from scratch (the
num2words recipes): its `teacher/` (and `pseudo_targets/`, the teacher's outputs for sequence-level
KD) are linked into every build's output folder, which the run then reuses as it reuses them on a
rerun (same teacher weights, data and settings, checked), so every build distils the same teacher.
Each build runs the recipe for every seed (`train.seed` 1..N, or from `--from-seed`): the student trained with the teacher
and the no-teacher baseline trained from the same initialisation (`train.baseline: true`), both
with the recipe's budget. The speed-ups are measured side by side with the teacher in one report of
every build's first seed's student (the builds' shapes do not depend on the seed). It prints, per
build: parameters, speed-up at each latency batch size (translation and causal LM: greedy
decoding and beam search), the student's and the baseline's test score (mean ± sd over the seeds),
what distillation adds (student - baseline, mean ± sd of the paired differences) and the share of
the teacher's score kept.

The default builds are chosen by the recipe's task. Classification, sized for the quickstart's
MiniLM-L6 teacher (6 layers, 384 channels in 12 heads, MLP 1536) so that each runs about 3x faster
than the teacher at batch 1 on a 2-core CPU: two layers evenly spaced (the recipe's default), two
layers chosen by `skip_kl`, all six layers with a quarter of the channels (3 heads) and half the
MLP, and three layers with three quarters of the channels and half the MLP. Translation, for
num2words_en_fr's Marian teacher (3 encoder and 3 decoder layers, 256 channels, MLP 1024): one
decoder layer evenly spaced (the recipe's), one chosen by `skip_kl`, all three with a quarter of
the MLP (an encoder-decoder is pruned along decoder depth and MLP width only), and one decoder
layer (by `skip_kl`) with half the MLP. Causal LM, for num2words_causal_en_fr's Llama teacher (3
layers, 256 channels in 4 heads of 64 with 2 key/value groups, MLP 768): one layer evenly spaced
(the recipe's), one chosen by `skip_kl`, all three with half the channels, half the heads (one
key/value group) and half the MLP, and two layers with three quarters of the channels and half the
MLP. `--variant` replaces them. Extra key=value overrides go to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from distill.cli import find_recipe
from distill.config import load_recipe

BUILDS = {
    "classification": {
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
    },
    "translation": {
        "1 decoder layer, evenly spaced": ["student.init=copy_layers", "student.num_decoder_layers=1"],
        "1 decoder layer by skip_kl": [
            "student.init=copy_layers",
            "student.num_decoder_layers=1",
            "student.decoder_layers=auto",
        ],
        "width: 3 decoder layers, MLP 1/4": [
            "student.init=prune",
            "student.prune.layers=1.0",
            "student.prune.intermediate=0.25",
        ],
        "depth + width: 1 decoder layer, MLP 1/2": [
            "student.init=prune",
            "student.prune.layers=0.34",  # a fraction: 1 of 3 (a target of 1 is the fraction 1.0, all)
            "student.prune.intermediate=0.5",
        ],
    },
    "causal_lm": {
        "1 layer, evenly spaced": ["student.init=copy_layers", "student.num_layers=1"],
        "1 layer by skip_kl": ["student.init=copy_layers", "student.num_layers=1", "student.layers=auto"],
        "width: 3 layers, hidden 1/2, heads 1/2, MLP 1/2": [
            "student.init=prune",
            "student.prune.layers=1.0",
            "student.prune.hidden=0.5",
            "student.prune.heads=0.5",
            "student.prune.intermediate=0.5",
        ],
        "depth + width: 2 layers, hidden 3/4, MLP 1/2": [
            "student.init=prune",
            "student.prune.layers=2",
            "student.prune.hidden=0.75",
            "student.prune.intermediate=0.5",
        ],
    },
}
POINTS = ("bleu", "chrf")  # metrics on a 0-100 scale
REUSED = ("teacher", "pseudo_targets")  # what a run folder lends every build: linked, never copied


def mean_sd(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


def folder_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def link_tree(source: Path, target: Path) -> None:
    """``source`` at ``target`` as hard links: the same bytes, so the run's checks see the same files."""
    shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "teacher", help="a fine-tuned teacher folder, or a run folder whose teacher/ to reuse"
    )
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--from-seed", type=int, default=1, help="first seed to run (a later session adding seeds)"
    )
    parser.add_argument("--out", default="student_builds_runs")
    parser.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value")
    args, overrides = parser.parse_known_args()
    task = load_recipe(find_recipe(args.recipe), overrides).task
    builds = BUILDS.get(task, BUILDS["classification"])
    if args.variant:
        builds = {}
        for spec in args.variant:
            name, _, keys = spec.partition("=")
            builds[name] = [k for k in keys.split(",") if k]
    given = Path(args.teacher)
    lender = given if (given / "teacher").is_dir() else None  # a run folder: its teacher/ is reused
    teacher = given / "teacher" if lender else given
    use_teacher = [] if lender else [f"teacher.name_or_path={teacher}", "teacher.finetune.enabled=false"]
    runs = Path(args.out)
    rows = []
    seed1: dict[str, Path] = {}  # build -> its first seed's student folder
    for name, extra in builds.items():
        students, baselines = [], []
        for seed in range(args.from_seed, args.seeds + 1):
            out = runs / f"{folder_name(name)}_seed{seed}"
            cmd = [
                *(sys.executable, "-m", "distill.cli", "run", args.recipe),
                *use_teacher,
                "train.baseline=true",
                "eval.latency=false",  # measured below: every build side by side in one report
                f"train.seed={seed}",
                f"output.dir={out}",
                *extra,
                *overrides,
            ]
            if lender and not (out / "config.yaml").exists():
                for part in REUSED:
                    if (lender / part).is_dir():
                        link_tree(lender / part, out / part)
            if not (out / "complete.json").exists():
                subprocess.run([*cmd, *(["--resume"] if (out / "config.yaml").exists() else [])], check=True)
            report = json.loads((out / "report.json").read_text())
            primary = report["primary_metric"]
            by_name = {m["name"]: m for m in report["models"]}
            students.append(by_name["student"]["metrics"][primary])
            baselines.append(by_name["baseline"]["metrics"][primary])
            teacher_score = by_name["teacher"]["metrics"][primary]
            if seed == args.from_seed:
                seed1[name] = out / "student"
                params = by_name["student"]["parameters"]
        rows.append((name, params, students, baselines, teacher_score, primary))

    # The speed-ups: the teacher and every build's first-seed student, side by side in one report.
    timed = runs / "latency"
    if not (timed / "report.json").exists():
        subprocess.run(
            [
                *(sys.executable, "-m", "distill.cli", "evaluate", args.recipe, "--teacher", str(teacher)),
                *(x for path in seed1.values() for x in ("--student", str(path))),
                *("--out", str(timed), *use_teacher, "eval.latency=true", *overrides),
            ],
            check=True,
        )
    timing = {m["source"]: m for m in json.loads((timed / "report.json").read_text())["models"]}

    name, _, _, _, teacher_score, primary = rows[0]
    print(f"{args.recipe}: seeds {args.from_seed}-{args.seeds}; teacher {primary} {teacher_score:.4f}")
    print("| build | parameters | speed-up (batch size) | student | baseline | distillation adds | kept |")
    print("|---|---|---|---|---|---|---|")
    for name, params, students, baselines, teacher_score, _ in rows:
        speeds = "; ".join(
            f"{mode} " + ", ".join(f"{k.split('_')[-1]}: {v:.2f}x" for k, v in by_size.items())
            for mode, by_size in timing[str(seed1[name])]["speedup"].items()
        )
        scale = 1 if primary in POINTS else 100  # sacrebleu's scores are points already
        gains = [(s - b) * scale for s, b in zip(students, baselines, strict=True)]
        spread = f" ± {statistics.stdev(gains):.2f}" if len(gains) > 1 else ""
        print(
            f"| {name} | {params / 1e6:.2f}M | {speeds} | {mean_sd(students)} | {mean_sd(baselines)} "
            f"| {statistics.fmean(gains):+.2f}{spread} pts | {statistics.fmean(students) / teacher_score:.1%} |"
        )
    # Each seed's scores, so that a later session's seeds can be pooled with these.
    for name, _, students, baselines, _, _ in rows:
        each = ", ".join(
            f"seed {seed}: {s:.4f} / {b:.4f}"
            for seed, s, b in zip(range(args.from_seed, args.seeds + 1), students, baselines, strict=True)
        )
        print(f"{name}: student / baseline by seed: {each}")


if __name__ == "__main__":
    main()
