"""Two processes (gloo, CPU) give the same results as one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_report, recipe_dict, save_tiny_bert, write_recipe

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_match_one_process(tmp_path, data_csv):
    teacher = save_tiny_bert(tmp_path / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    raw = recipe_dict(
        teacher,
        data_csv,
        tmp_path / "unused",
        # 39 and 41 held-out examples: not divisible by 2 processes, nor by the eval batch.
        data={"validation_size": 39, "test_size": 41},
        train={"steps": 6, "log_every": 1, "eval_every": 3, "learning_rate": 3e-3},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    launch(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={one}", "train.batch_size=8"],
        tmp_path,
    )
    # `accelerate launch --cpu --num_processes 2` starts one process; torchrun starts two.
    launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "distill.cli",
            "run",
            str(recipe),
            f"output.dir={two}",
            "train.batch_size=4",
        ],
        tmp_path,
    )
    a = json.loads((one / "results.json").read_text())
    b = json.loads((two / "results.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    ra, rb = read_report(one), read_report(two)
    assert ra["examples"] == rb["examples"] == 41  # every test example counted once, none duplicated
    for model in ("teacher", "student"):
        ma, mb = ra["by_name"][model]["metrics"], rb["by_name"][model]["metrics"]
        assert ma["accuracy"] == mb["accuracy"], model
        assert ma["macro_f1"] == pytest.approx(mb["macro_f1"]), model
    assert a["student_validation"] == b["student_validation"]
    # The training losses (global means over the same 8 examples per step) agree step by step.
    la = [h["train/loss"] for h in _history(one)]
    lb = [h["train/loss"] for h in _history(two)]
    assert len(la) == len(lb) == 6
    assert la == pytest.approx(lb, rel=1e-4)


def _history(out: Path) -> list[dict]:
    return [h for h in json.loads((out / "results.json").read_text())["history"] if "train/loss" in h]
