"""Two processes (gloo, CPU) give the same results as one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
    launch(torchrun(recipe, two, "train.batch_size=4"), tmp_path)
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


def torchrun(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
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
        f"output.dir={out}",
        *extra,
    ]


def test_two_processes_checkpoint_every_step_and_resume_after_sigterm(tmp_path, data_csv):
    """Every checkpoint of two processes is sealed only once both wrote into it; SIGTERM to torchrun
    stops both ranks with one line, and --resume ends with the uninterrupted run's weights."""
    import signal
    import time

    from safetensors.torch import load_file

    from distill.checkpoints import listed, problem

    teacher = save_tiny_bert(tmp_path / "teacher")  # dropout on: each rank's RNG state matters
    raw = recipe_dict(
        teacher,
        data_csv,
        tmp_path / "unused",
        train={"steps": 8, "batch_size": 4, "checkpoint_every": 1, "keep_checkpoints": 10, "log_every": 3},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    launch(torchrun(recipe, straight), tmp_path)
    kept = listed(straight / "stages" / "distill")
    assert [c.name for c in kept] == [f"step_{i}" for i in range(1, 8)]
    for checkpoint in kept:
        assert problem(checkpoint, 2) is None, checkpoint
        names = set(json.loads((checkpoint / "manifest.json").read_text())["files"])
        assert {"random_states_0.pkl", "random_states_1.pkl", "running_0.json", "running_1.json"} <= names
    assert not list(straight.rglob(".partial_*"))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    proc = subprocess.Popen(
        torchrun(recipe, stopped), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    trigger = stopped / "stages" / "distill" / "checkpoints" / "step_3"
    deadline = time.monotonic() + 300
    while not trigger.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert stderr.count("distill: stopped by SIGTERM; `distill run") == 1, stderr[-3000:]  # rank 0 only
    assert not (stopped / "student").exists()
    launch(torchrun(recipe, stopped, "--resume"), tmp_path)
    a, b = (load_file(d / "student" / "model.safetensors") for d in (straight, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads((d / "results.json").read_text())["history"] for d in (straight, stopped)]
    assert history[0] == history[1]


def one_and_two_processes(recipe: Path, tmp_path: Path):
    """The recipe run by one process with batches of 8 and by two (torchrun) with 4 each:
    ``(one's folder, two's folder, two's finished process)``."""
    one, two = tmp_path / "one", tmp_path / "two"
    launch(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={one}", "train.batch_size=8"],
        tmp_path,
    )
    return one, two, launch(torchrun(recipe, two, "train.batch_size=4"), tmp_path)


def paired_shards(one: Path, two: Path) -> list[tuple[str, dict, dict]]:
    """Both runs' teacher-store shards, by name (the same names in both)."""
    from safetensors.torch import load_file

    a = sorted((one / "teacher_outputs").glob("shard_*.safetensors"))
    b = sorted((two / "teacher_outputs").glob("shard_*.safetensors"))
    assert [p.name for p in a] == [p.name for p in b]
    return [(x.name, load_file(str(x)), load_file(str(y))) for x, y in zip(a, b, strict=True)]


def test_two_processes_build_the_same_teacher_store_each_writing_its_shards(tmp_path, data_csv):
    teacher = save_tiny_bert(tmp_path / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    raw = recipe_dict(
        teacher,
        data_csv,
        tmp_path / "unused",
        teacher={"name_or_path": str(teacher), "cache": True, "cache_shard_size": 50},
        train={"steps": 4, "learning_rate": 3e-3},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two, proc = one_and_two_processes(recipe, tmp_path)
    assert "teacher outputs: 0 of 7 shards stored, computing 7" in proc.stdout
    # What every rank would say alike (the data's notes) is said once, by rank 0.
    assert proc.stderr.count("distill: carved a validation split of") == 1, proc.stderr[-2000:]
    shards = paired_shards(one, two)
    assert len(shards) == 7  # 320 examples in shards of 50
    for name, tx, ty in shards:
        assert torch.equal(tx["rows"], ty["rows"])
        assert torch.allclose(tx["logits"], ty["logits"], atol=1e-6), name
    la = [h["train/loss"] for h in _history(one)]
    lb = [h["train/loss"] for h in _history(two)]
    assert la == pytest.approx(lb, rel=1e-4)


def test_two_processes_distil_a_decoder_only_model_as_one(tmp_path, pairs_csv):
    """causal_lm, token-level and on-policy KD: 2 processes x 4 examples give the losses of 1
    process x 8 (each example's sample is seeded by itself, not by the process that has it)."""
    import numpy as np
    from test_causal_lm import causal_recipe, save_causal

    teacher = save_causal(tmp_path / "teacher", "llama")
    raw = causal_recipe(
        teacher,
        pairs_csv,
        tmp_path / "unused",
        loss={"on_policy": 0.5},
        train={"steps": 4, "log_every": 1, "seed": 5},
    )
    # Steps 2 and 4 train on the student's samples, 1 and 3 on the data (the draws, seeded by step).
    draws = [np.random.default_rng([5, step, 0]).random() < 0.5 for step in range(1, 5)]
    assert draws == [False, True, False, True]
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    launch(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={one}", "train.batch_size=8"],
        tmp_path,
    )
    launch(torchrun(recipe, two, "train.batch_size=4"), tmp_path)
    la = [h["train/loss"] for h in _history(one)]
    lb = [h["train/loss"] for h in _history(two)]
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, rel=1e-4)
    # Sampled batches are scored by the divergence alone; the data's mix it with cross-entropy.
    for entry, sampled in zip(_history(two), draws, strict=True):
        assert (entry["train/loss"] == pytest.approx(entry["train/soft"], rel=1e-6)) == sampled, entry
    ra, rb = read_report(one), read_report(two)
    assert ra["examples"] == rb["examples"] == 20
    for model in ("teacher", "student"):
        ma, mb = ra["by_name"][model]["metrics"], rb["by_name"][model]["metrics"]
        assert ma["perplexity"] == pytest.approx(mb["perplexity"], rel=1e-4), model
        assert ma["chrf"] == pytest.approx(mb["chrf"], rel=1e-3), model


def test_two_processes_build_and_read_a_compact_store_as_one(tmp_path, pairs_csv):
    """Translation from a compact teacher store: each process writes its own shards (bit-identical
    to one process's) and reads its own batches' rows; the losses are one process's."""
    from conftest import save_tiny_marian, translation_recipe

    # no dropout: each process draws its own masks
    teacher = save_tiny_marian(
        tmp_path / "teacher", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0
    )
    raw = translation_recipe(
        teacher,
        pairs_csv,
        tmp_path / "unused",
        teacher={"cache": True, "cache_top_k": 8, "cache_shard_size": 64, "cache_format": "compact"},
        train={"steps": 4, "log_every": 1},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two, proc = one_and_two_processes(recipe, tmp_path)
    assert "teacher outputs: 0 of 5 shards stored, computing 5" in proc.stdout
    shards = paired_shards(one, two)
    assert len(shards) == 5  # 260 examples in shards of 64
    for name, tx, ty in shards:
        assert "codes" in tx and all(torch.equal(tx[k], ty[k]) for k in tx), name
    la = [h["train/loss"] for h in _history(one)]
    lb = [h["train/loss"] for h in _history(two)]
    assert len(la) == 4 and la == pytest.approx(lb, rel=1e-4)
