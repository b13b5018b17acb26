"""One run per output folder: two runs started into one folder at (nearly) the same moment end with
one finished run, whole and from one of them, and the other refused in one line; a killed holder
leaves no lock behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import recipe_dict, save_tiny_bert, write_recipe

from distill.errors import DistillError
from distill.folder_lock import LOCK_FILE, FolderLock, holder

ROOT = Path(__file__).resolve().parent.parent


def env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp / "hf"),
    }


def start(recipe: Path, out: Path, seed: int, tmp: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={out}", f"train.seed={seed}"]
    return subprocess.Popen(cmd, env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def history(out: Path) -> list:
    return json.loads((out / "results.json").read_text())["history"]


def test_two_runs_into_one_folder_one_finishes_the_other_is_refused(tmp_path, data_csv):
    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"),
        data_csv,
        tmp_path / "unused",
        train={"steps": 80, "checkpoint_every": 40, "log_every": 20},  # a few seconds of training
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    # Each seed's run alone: a finished folder must be wholly one of them.
    references = {}
    for seed in (1, 2):
        proc = start(recipe, tmp_path / f"ref{seed}", seed, tmp_path)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
        references[seed] = history(tmp_path / f"ref{seed}")
    assert references[1] != references[2]

    # The second run starts at the same moment, while the first loads, and while it trains.
    for trial, delay in enumerate((0.0, 0.8, 2.5)):
        out = tmp_path / f"out{trial}"
        first = start(recipe, out, 1, tmp_path)
        time.sleep(delay)
        second = start(recipe, out, 2, tmp_path)
        results = {seed: (p, *p.communicate(timeout=300)) for seed, p in ((1, first), (2, second))}
        codes = sorted(p.returncode for p, _, _ in results.values())
        assert codes == [0, 2], {s: (p.returncode, err[-1500:]) for s, (p, _, err) in results.items()}
        winner = next(s for s, (p, _, _) in results.items() if p.returncode == 0)
        _, _, loser_err = results[3 - winner]
        errors = [line for line in loser_err.splitlines() if line.startswith("distill: error:")]
        assert len(errors) == 1 and "Traceback" not in loser_err, loser_err[-2000:]
        in_use = f"is in use by another run (pid {results[winner][0].pid} on "
        assert in_use in errors[0] or "holds a finished run" in errors[0], errors[0]
        # The folder is the winner's, whole: its recipe, its history, finished.
        assert f"seed: {winner}" in (out / "config.yaml").read_text()
        assert history(out) == references[winner], (trial, winner)
        assert (out / "complete.json").is_file() and (out / "student" / "model.safetensors").is_file()
        assert holder(out) is None  # nobody holds it once both have ended


def hold(out: Path, tmp: Path) -> subprocess.Popen:
    """A process that holds ``out``'s lock until it is killed."""
    code = (
        "import sys, time; from distill.folder_lock import FolderLock; "
        f"FolderLock({str(out)!r}).claim(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env(tmp), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_leaves_no_lock_and_a_live_one_is_named(tmp_path):
    out = tmp_path / "out"
    proc = hold(out, tmp_path)
    held = holder(out)
    assert held is not None and held["pid"] == proc.pid
    with pytest.raises(DistillError, match=rf"is in use by another run \(pid {proc.pid} on "):
        FolderLock(out).claim()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / LOCK_FILE).exists() and holder(out) is None  # the file stays, the lock does not
    lock = FolderLock(out)
    lock.claim()
    assert holder(out) is not None  # held by this process now
    lock.release()
    assert holder(out) is None


def test_evaluate_into_a_folder_a_run_holds_is_refused(tmp_path, capsys):
    """`distill evaluate --out` (or into the recipe's output folder) never writes a report into a
    folder a live run is writing: refused in one line, exit 2, before anything is loaded."""
    from distill.cli import main

    teacher = save_tiny_bert(tmp_path / "teacher")
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(teacher, tmp_path / "missing.csv", tmp_path / "run")
    )
    capsys.readouterr()
    for out, extra in (
        (tmp_path / "elsewhere", ["--out", str(tmp_path / "elsewhere")]),
        (tmp_path / "run", []),
    ):
        proc = hold(out, tmp_path)
        try:
            code = main(["evaluate", str(recipe), "--student", str(teacher), *extra])
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"{out} is in use by another run (pid {proc.pid} on " in lines[0], err
        assert lines[0].endswith("or write the report elsewhere with --out"), err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no report written
