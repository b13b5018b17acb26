"""Sharded training (FSDP2) on two gloo CPU processes, through Accelerate's own FSDP2 code with its
state set to FSDP (``tests/fsdp_on_cpu.py``: Accelerate itself enables FSDP only on GPUs): the
sharded student trains as one process does, is gathered into a plain ``from_pretrained`` folder,
checkpoints its sharded state, and a run killed (-9) mid-stage resumes to the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import read_report, recipe_dict, save_tiny_bert, write_recipe
from safetensors.torch import load_file
from test_distributed import free_port
from test_faults import env

HERE = Path(__file__).resolve().parent


def sharded(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_port", str(free_port()), str(HERE / "fsdp_on_cpu.py")),
        *("run", str(recipe), f"output.dir={out}", "train.batch_size=4", *extra),
    ]


def run_one_and(recipe: Path, one: Path, launched: list[str], environ: dict[str, str]) -> None:
    """The recipe in one process with batch 8 into ``one``, then the ``launched`` command."""
    single = [
        sys.executable,
        "-m",
        "distill.cli",
        "run",
        str(recipe),
        f"output.dir={one}",
        "train.batch_size=8",
    ]
    for cmd in (single, launched):
        done = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]


def run_one_and_sharded(recipe: Path, one: Path, two: Path, tmp: Path) -> None:
    """The recipe in one process with batch 8 into ``one``, and sharded over two with 4 each into ``two``."""
    run_one_and(recipe, one, sharded(recipe, two), env(tmp))


def kill_all_when(cmd: list[str], environ: dict[str, str], trigger: Path) -> None:
    """Start the launch ``cmd`` and, once ``trigger`` exists, kill -9 every process at once (a lost
    machine): the launcher and each rank, which run in their own groups."""
    proc = subprocess.Popen(
        cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not trigger.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    launcher = psutil.Process(proc.pid)
    for process in [*launcher.children(recursive=True), launcher]:
        process.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def checkpointed_recipe(tmp_path: Path, data_csv: Path) -> Path:
    """A tiny BERT distilled for 8 steps, logged and checkpointed at each, without dropout (so that
    one process and several see the same computation)."""
    teacher = save_tiny_bert(tmp_path / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    raw = recipe_dict(
        teacher,
        data_csv,
        tmp_path / "unused",
        train={"steps": 8, "checkpoint_every": 1, "log_every": 1, "learning_rate": 3e-3},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    return recipe


def history(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["history"]


def test_fsdp2_trains_as_one_process_saves_a_plain_folder_and_resumes_exactly(tmp_path, data_csv):
    recipe = checkpointed_recipe(tmp_path, data_csv)
    one, straight, killed = tmp_path / "one", tmp_path / "straight", tmp_path / "killed"
    run_one_and_sharded(recipe, one, straight, tmp_path)

    # Sharded for real: Accelerate's FSDP2 checkpoint layout, one optimizer shard per process.
    checkpoint = straight / "stages" / "distill" / "checkpoints" / "step_7"
    files = set(json.loads((checkpoint / "manifest.json").read_text())["files"])
    assert any(f.startswith("pytorch_model_fsdp_0/") for f in files), sorted(files)[:8]
    assert any(f.startswith("optimizer_0/") for f in files), sorted(files)[:8]
    # The same global batch of 8: the same losses step by step, and the same report.
    la = [h["train/loss"] for h in history(one) if "train/loss" in h]
    lb = [h["train/loss"] for h in history(straight) if "train/loss" in h]
    assert len(la) == len(lb) == 8 and la == pytest.approx(lb, rel=1e-4)
    ra, rb = read_report(one), read_report(straight)
    assert ra["by_name"]["student"]["metrics"] == rb["by_name"]["student"]["metrics"]
    # The frozen teacher sharded too (teacher.shard=auto), half of it on each process, and gave the
    # losses of the whole one above; the report measured it whole again, read back from its folder.
    shard = json.loads((straight / "results.json").read_text())["teacher_sharded"]
    assert shard["processes"] == 2 and shard["parameters_per_process"] < 0.6 * shard["parameters"], shard
    assert "teacher_sharded" not in json.loads((one / "results.json").read_text())
    assert ra["by_name"]["teacher"]["metrics"] == rb["by_name"]["teacher"]["metrics"]
    # Gathered into a whole, plain folder: every weight of the single-process student, close to it.
    a, b = (load_file(str(d / "student" / "model.safetensors")) for d in (one, straight))
    assert set(a) == set(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # Every process killed at once (a lost machine): the launcher and both ranks.
    kill_all_when(
        sharded(recipe, killed), env(tmp_path), killed / "stages" / "distill" / "checkpoints" / "step_4"
    )
    assert not (killed / "student").exists()
    resumed = subprocess.run(
        sharded(recipe, killed, "--resume"), env=env(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = load_file(str(killed / "student" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert history(straight) == history(killed)


def test_fsdp2_decoder_only_with_on_policy_samples_and_generated_scores(tmp_path, pairs_csv):
    """generate() on a sharded student (on-policy samples of different lengths per process,
    validation by greedy completions) keeps the processes in step, and so does the sharded teacher
    scoring them: the run ends, in bf16, with the losses of one process with the same global batch."""
    from test_causal_lm import causal_recipe, save_causal

    raw = causal_recipe(
        save_causal(tmp_path / "teacher", "llama"),
        pairs_csv,
        tmp_path / "unused",
        loss={"on_policy": 0.5},
        train={"steps": 4, "log_every": 1, "eval_every": 2, "seed": 5, "mixed_precision": "bf16"},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    run_one_and_sharded(recipe, one, two, tmp_path)
    la = [h["train/loss"] for h in history(one) if "train/loss" in h]
    lb = [h["train/loss"] for h in history(two) if "train/loss" in h]
    assert len(la) == len(lb) == 4 and la == pytest.approx(lb, rel=2e-2)  # bf16: rounding differs by layout
    assert read_report(two)["mixed_precision"] == "bf16"
    # The teacher that scored the samples was sharded as well (teacher.shard=auto): half on each.
    shard = json.loads((two / "results.json").read_text())["teacher_sharded"]
    assert shard["processes"] == 2 and shard["parameters_per_process"] < 0.6 * shard["parameters"], shard
