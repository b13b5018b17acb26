"""On-policy vs off-policy distillation of the offline decoder-only recipe, over several seeds.

    python benchmarks/on_vs_off_policy.py [--recipe recipes/num2words_causal_en_fr.yaml]
        [--teacher-run runs/num2words_causal_en_fr] [--seeds 1 2 3] [--out runs/on_vs_off_policy]

Run the recipe once first (``distill run recipes/num2words_causal_en_fr.yaml``): its trained teacher
and the teacher's completions (``teacher/``, ``pseudo_targets/``) are copied into each run folder,
so every student below learns from the same teacher and the same transfer set. For each seed, two
students through ``distill run`` (latency off): ``loss.on_policy`` as the recipe sets it, and 0
(off-policy: the same losses on the references and the teacher's completions only); the no-teacher
baseline is trained beside the on-policy one. Each figure is read from the run's ``report.json``,
i.e. measured on the saved student folder. Printed: one row per seed, then mean and standard
deviation of the test chrF and exact match, and the on - off difference per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml


def run(recipe: Path, teacher_run: Path, out: Path, seed: int, on_policy: float, baseline: bool) -> dict:
    report = out / "report.json"
    if not report.exists():
        if out.exists():
            shutil.rmtree(out)  # an unfinished earlier try
        out.mkdir(parents=True)
        for part in ("teacher", "pseudo_targets"):
            shutil.copytree(teacher_run / part, out / part)
        command = [
            sys.executable,
            "-m",
            "distill.cli",
            "run",
            str(recipe),
            f"output.dir={out}",
            f"train.seed={seed}",
            f"loss.on_policy={on_policy}",
            f"train.baseline={str(baseline).lower()}",
            "eval.latency=false",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        print(f"  {out.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {m["name"]: m["metrics"] for m in json.loads(report.read_text())["models"]}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/num2words_causal_en_fr.yaml"))
    parser.add_argument("--teacher-run", type=Path, default=Path("runs/num2words_causal_en_fr"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/on_vs_off_policy"))
    args = parser.parse_args()
    if not (args.teacher_run / "complete.json").exists():
        sys.exit(f"{args.teacher_run} is not a finished run of the recipe: run it first")
    on = yaml.safe_load(args.recipe.read_text())["loss"]["on_policy"]
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    rows = []
    for seed in args.seeds:
        a = run(args.recipe, args.teacher_run, args.out / f"seed{seed}_on", seed, on, baseline=True)
        b = run(args.recipe, args.teacher_run, args.out / f"seed{seed}_off", seed, 0.0, baseline=False)
        rows.append((seed, a["student"], b["student"], a["baseline"], a["teacher"]))

    teacher = rows[0][4]
    print(f"teacher: chrF {teacher['chrf']:.2f}, exact match {100 * teacher['exact_match']:.1f}%")
    print(
        f"| seed | on-policy ({on}) chrF | off-policy chrF | baseline chrF | on-policy EM % | off-policy EM % | baseline EM % |"
    )
    print("|---|---|---|---|---|---|---|")
    for seed, a, b, base, _ in rows:
        print(
            f"| {seed} | {a['chrf']:.2f} | {b['chrf']:.2f} | {base['chrf']:.2f} "
            f"| {100 * a['exact_match']:.1f} | {100 * b['exact_match']:.1f} | {100 * base['exact_match']:.1f} |"
        )
    chrf = [[r[i]["chrf"] for r in rows] for i in (1, 2, 3)]
    exact = [[100 * r[i]["exact_match"] for r in rows] for i in (1, 2, 3)]
    print(
        f"| mean ± sd | {mean_sd(chrf[0])} | {mean_sd(chrf[1])} | {mean_sd(chrf[2])} "
        f"| {mean_sd(exact[0])} | {mean_sd(exact[1])} | {mean_sd(exact[2])} |"
    )
    diff_chrf = [a - b for a, b in zip(chrf[0], chrf[1], strict=True)]
    diff_exact = [a - b for a, b in zip(exact[0], exact[1], strict=True)]
    print(
        f"on - off per seed: chrF {', '.join(f'{d:+.2f}' for d in diff_chrf)}; "
        f"exact match {', '.join(f'{d:+.1f}' for d in diff_exact)} points"
    )


if __name__ == "__main__":
    main()
