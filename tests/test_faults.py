"""Fault injection: runs killed (-9), stopped (SIGTERM, SIGINT) or starved of disk at every stage
finish with `--resume` exactly as an uninterrupted run: the same weights, bit for bit, the same
logged history and the same report figures."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    recipe_dict,
    save_tiny_bert,
    save_tiny_marian,
    sentiment_rows,
    translation_recipe,
    translation_rows,
    write_csv,
    write_recipe,
)
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("teacher", "student", "baseline")
# Each trial's moment is its trigger plus a random delay; set DISTILL_FAULT_SEED to replay a run.
SEED = int(os.environ.get("DISTILL_FAULT_SEED", random.SystemRandom().randrange(10**6)))


def env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # two cores, several processes: one thread each
        "HF_HOME": str(tmp / "hf"),
    }


def command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={out}", *extra]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A recipe with every stage (teacher fine-tuning, student, baseline, report), a checkpoint after
    every step and losses logged every 3 steps (so that resumes fall between logging steps), and
    the figures of one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("faults")
    teacher = save_tiny_bert(tmp / "teacher")  # dropout on: resuming must restore the RNG too
    data = write_csv(tmp / "data.csv", sentiment_rows(400))
    raw = recipe_dict(
        teacher,
        data,
        tmp / "unused",
        teacher={"finetune": {"enabled": True, "steps": 6, "batch_size": 8, "learning_rate": 1e-3}},
        # the student stages draw length-grouped batches, the teacher's stage shuffled ones: a
        # resume must land in the same place of both orders
        train={
            "steps": 8,
            "checkpoint_every": 1,
            "keep_checkpoints": 2,
            "log_every": 3,
            "baseline": True,
            "group_by_length": True,
        },
        eval={"latency": False},
    )
    recipe = write_recipe(tmp / "r.yaml", raw)
    reference = tmp / "reference"
    start = time.monotonic()
    proc = subprocess.run(
        command(recipe, reference), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, recipe, reference, time.monotonic() - start


def weights(out: Path) -> dict[str, dict]:
    return {f: load_file(out / f / "model.safetensors") for f in FOLDERS if (out / f).is_dir()}


def figures(out: Path) -> dict:
    """What must not depend on interruptions: metrics, sizes, history (timings aside)."""
    report = json.loads((out / "report.json").read_text())
    results = json.loads((out / "results.json").read_text())
    models = [
        {k: m[k] for k in ("name", "role", "metrics", "retained", "parameters", "size_mb")}
        for m in report["models"]
    ]
    results.pop("report", None)
    return {"models": models, "groups": report["groups"], "results": results}


def same_as_reference(out: Path, reference: Path) -> list[str]:
    problems = []
    a, b = weights(reference), weights(out)
    if set(a) != set(b):
        problems.append(f"folders {sorted(a)} vs {sorted(b)}")
    for folder in set(a) & set(b):
        for key, tensor in a[folder].items():
            if key not in b[folder] or not (tensor == b[folder][key]).all():
                problems.append(f"{folder}/{key} differs")
                break
    if figures(out) != figures(reference):
        problems.append("report or history differs")
    return problems


def stage_reached(out: Path) -> str:
    """Which stage a run was in when it stopped, from what it left on disk."""
    if not (out / "config.yaml").is_file():
        return "start-up"
    finetunes = yaml.safe_load((out / "config.yaml").read_text())["teacher"]["finetune"]["enabled"]
    if finetunes and not (out / "teacher" / "distill_finetune.json").is_file():
        return "teacher"
    for store in ("pseudo_targets", "teacher_outputs"):
        if (out / store).is_dir() and not (out / store / "complete.json").is_file():
            return "teacher outputs"
    if not (out / "stages" / "distill" / "complete.json").is_file():
        return "student"
    if not (out / "stages" / "baseline" / "complete.json").is_file():
        return "baseline"
    if not (out / "complete.json").is_file():
        return "report"
    return "finished"


@dataclass
class Trial:
    trigger: str  # a path under the output folder to wait for ("" : a time after start)
    delay: float  # seconds after the trigger
    sig: int = signal.SIGKILL
    again: bool = False  # also kill the first resume, at the same point


TRIALS = [
    Trial("", 0.4),
    Trial("", 0.5, signal.SIGINT),  # Ctrl-C while the libraries load
    Trial("", 2.5),
    Trial("config.yaml", 0.0, signal.SIGTERM),
    Trial("stages/teacher_finetune/checkpoints/step_1", 0.0),
    Trial("stages/teacher_finetune/checkpoints/step_3", 0.05),
    Trial("teacher/distill_finetune.json", 0.0),
    Trial("stages/distill/checkpoints/step_2", 0.0),
    Trial("stages/distill/checkpoints/step_5", 0.03),
    Trial("stages/distill/checkpoints/step_4", 0.01, signal.SIGTERM),
    Trial("stages/baseline/checkpoints/step_1", 0.0, again=True),
    Trial("stages/baseline/checkpoints/step_6", 0.02),
    Trial("stages/baseline/checkpoints/step_3", 0.0, signal.SIGINT),
    Trial("stages/baseline/complete.json", 0.0),
    Trial("stages/baseline/complete.json", 0.2),
    Trial("stages/baseline/complete.json", 0.1, signal.SIGTERM),
]


def interrupt(cmd: list[str], out: Path, trial: Trial, environment: dict) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait for the trigger (plus the delay), send the signal; returns the process."""
    proc = subprocess.Popen(cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def fire():
        target = out / trial.trigger if trial.trigger else None
        while target is not None and not target.exists() and proc.poll() is None and not stop.is_set():
            time.sleep(0.005)
        time.sleep(trial.delay)
        if proc.poll() is None:
            proc.send_signal(trial.sig)

    watcher = threading.Thread(target=fire)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=300)
    stop.set()
    watcher.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def killed_mid_stage_and_resumed(recipe: Path, tmp: Path, trigger: str) -> tuple[Path, Path]:
    """An uninterrupted run into ``tmp/reference``, and one into ``tmp/out`` killed (-9) when
    ``trigger`` appears, inside the student stage, then resumed; returns both folders."""
    reference, out = tmp / "reference", tmp / "out"
    done = subprocess.run(
        command(recipe, reference), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first = interrupt(command(recipe, out), out, Trial(trigger, 0.0, signal.SIGKILL), env(tmp))
    assert first.returncode != 0 and not (out / "student").exists()  # stopped inside the student stage
    resumed = subprocess.run(
        command(recipe, out, "--resume"), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return reference, out


def run_trial(index: int, trial: Trial, setup, keep: bool = False) -> dict:
    tmp, recipe, reference, _ = setup
    out = tmp / f"trial{index}"
    jitter = random.Random(f"{SEED}-{index}").uniform(0.0, 0.05)
    trial = Trial(trial.trigger, trial.delay + jitter, trial.sig, trial.again)
    environment = env(tmp)
    first = interrupt(command(recipe, out), out, trial, environment)
    outcome = {"trial": trial, "stage": stage_reached(out), "rc": first.returncode, "stderr": first.stderr}
    attempts = 0
    if trial.again and first.returncode != 0:
        interrupt(command(recipe, out, "--resume"), out, trial, environment)
        attempts += 1
    while not (out / "complete.json").is_file() and attempts < 4:
        done = subprocess.run(
            command(recipe, out, "--resume"), env=environment, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        attempts += 1
    outcome["problems"] = same_as_reference(out, reference)
    outcome["leftovers"] = [str(p.relative_to(out)) for p in out.rglob(".partial_*")] + [
        str(p.relative_to(out)) for p in out.rglob(".old_*")
    ]
    if not keep:
        shutil.rmtree(out)
    return outcome


def test_interrupted_runs_resume_to_the_same_weights(setup):
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda it: run_trial(*it, setup), enumerate(TRIALS)))
    stages = {}
    for o in outcomes:
        stages[o["stage"]] = stages.get(o["stage"], 0) + 1
        trial = o["trial"]
        assert not o["problems"], (f"DISTILL_FAULT_SEED={SEED}", trial, o["stage"], o["problems"])
        assert not o["leftovers"], (f"DISTILL_FAULT_SEED={SEED}", trial, o["leftovers"])
        if trial.sig != signal.SIGKILL and o["stage"] != "finished":
            # Stopped by a signal: one line that says how to finish, no traceback.
            assert o["rc"] == 128 + trial.sig, (trial, o["rc"], o["stderr"][-2000:])
            assert "Traceback" not in o["stderr"], o["stderr"][-3000:]
            last = o["stderr"].strip().splitlines()[-1]
            assert last.startswith(f"distill: stopped by {signal.Signals(trial.sig).name}; `distill run")
            assert last.endswith("--resume` finishes it")
    print(
        f"\n{len(outcomes)} interrupted runs (seed {SEED}), all resumed bit-identical; stopped in: {stages}"
    )
    # The triggers put the interruptions in every stage of the run.
    assert {"teacher", "student", "baseline", "report"} <= set(stages), stages


def test_a_finished_run_left_alone_by_resume(setup):
    _, recipe, reference, _ = setup
    proc = subprocess.run(
        command(recipe, reference, "--resume"), env=env(setup[0]), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "holds a finished run" in proc.stderr


def _checkpointed(setup, name: str) -> tuple[Path, Path]:
    """A copy of the reference run as a kill right after the student's last checkpoint leaves it."""
    tmp, recipe, reference, _ = setup
    out = tmp / name
    shutil.copytree(reference, out)
    for leftover in (
        "complete.json",
        "student",
        "baseline",
        "stages/distill/complete.json",
        "stages/baseline",
    ):
        path = out / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for f in ("report.json", "report.md", "report.png", "results.json"):
        (out / f).unlink()
    return out, out / "stages" / "distill" / "checkpoints"


def _resume(setup, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(setup[1], out, "--resume"), env=env(setup[0]), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "damage",
    [
        "truncate model",
        "empty optimizer",
        "flip a byte of the RNG state",
        "delete the manifest",
        "lose a file",
    ],
)
def test_a_damaged_latest_checkpoint_is_skipped(setup, damage):
    out, checkpoints = _checkpointed(setup, f"damaged-{damage.replace(' ', '-')}")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_6", "step_7"]
    latest = checkpoints / "step_7"
    if damage == "truncate model":
        data = (latest / "model.safetensors").read_bytes()
        (latest / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "empty optimizer":
        (latest / "optimizer.bin").write_bytes(b"")
    elif damage == "flip a byte of the RNG state":
        rng = latest / "random_states_0.pkl"
        data = bytearray(rng.read_bytes())
        data[len(data) // 2] ^= 0xFF
        rng.write_bytes(bytes(data))
    elif damage == "delete the manifest":
        (latest / "manifest.json").unlink()
    else:
        (latest / "scheduler.json").unlink()
    (checkpoints / ".partial_step_8").mkdir()  # and what interrupted writes left behind
    (out / "stages" / ".old_teacher_finetune").mkdir()  # a kill while a finished stage's checkpoints went
    (out / "teacher" / ".partial_README.md").write_text("half")
    proc = _resume(setup, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if "is damaged" in line]
    assert len(warning) == 1 and "step_7" in warning[0] and "resuming from step_6" in warning[0], proc.stderr
    assert not same_as_reference(out, setup[2])
    assert not (checkpoints / ".partial_step_8").exists()
    assert not list(out.rglob(".partial_*")) and not list(out.rglob(".old_*"))


def test_no_intact_checkpoint_is_one_line_exit_2(setup):
    out, checkpoints = _checkpointed(setup, "all-damaged")
    for checkpoint in checkpoints.iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"")
    proc = _resume(setup, out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: error: distill: no intact checkpoint to resume from")
    assert "step_7: model.safetensors has 0 bytes" in last and "Traceback" not in proc.stderr


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_stops_with_one_line_and_resumes(setup):
    """Writes past a file-size limit fail as on a full disk: one line, exit 2, the earlier state kept."""
    tmp, recipe, reference, _ = setup
    out = tmp / "full-disk"
    proc = subprocess.run(
        command(recipe, out),
        env=env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(100_000),  # the teacher's optimizer state is larger
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: error: cannot write ") and "File too large" in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (out / "config.yaml").is_file() and not (out / "teacher").exists()
    done = _resume(setup, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not same_as_reference(out, reference)


def test_a_diverged_run_is_stopped_and_saves_nothing(setup):
    tmp, recipe, _, _ = setup
    out = tmp / "diverged"
    proc = subprocess.run(
        command(recipe, out, "train.learning_rate=1e4", "train.log_every=1"),
        env=env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distill: error: distill: training diverged at step "), last
    assert "Traceback" not in proc.stderr
    step = int(last.split("diverged at step ")[1].split()[0])
    assert not (out / "student").exists() and not (out / "report.json").exists()
    assert not (out / "results.json").exists() and not (out / "complete.json").exists()
    # The teacher stage had finished and stays; the checkpoints kept are from before the bad step.
    assert (out / "teacher" / "distill_finetune.json").is_file()
    kept = sorted(int(p.name[5:]) for p in (out / "stages" / "distill" / "checkpoints").glob("step_*"))
    assert kept and max(kept) < step

    def strict(constant, path):
        pytest.fail(f"{path} holds {constant}, which is not JSON")

    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda c, p=path: strict(c, p))


@pytest.fixture(scope="module")
def seq_setup(tmp_path_factory):
    """Translation with sequence-level KD: the teacher's outputs are a stage of their own."""
    tmp = tmp_path_factory.mktemp("seqfaults")
    teacher = save_tiny_marian(tmp / "teacher")
    data = write_csv(tmp / "pairs.csv", translation_rows(600))
    raw = translation_recipe(
        teacher,
        data,
        tmp / "unused",
        loss={"sequence_kd": "mix", "sequence_kd_beams": 2},
        train={"steps": 6, "checkpoint_every": 1, "keep_checkpoints": 2, "log_every": 4, "baseline": True},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp / "r.yaml", raw)
    reference = tmp / "reference"
    proc = subprocess.run(
        command(recipe, reference), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, recipe, reference, 0.0


SEQ_TRIALS = [
    Trial("pseudo_targets/settings.json", 0.0),
    Trial("pseudo_targets/settings.json", 0.15, signal.SIGTERM),
    Trial("pseudo_targets/complete.json", 0.0),
    Trial("stages/distill/checkpoints/step_2", 0.0),
]


def test_interrupted_teacher_outputs_resume_to_the_same_weights(seq_setup):
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda it: run_trial(*it, seq_setup), enumerate(SEQ_TRIALS)))
    for o in outcomes:
        assert not o["problems"], (f"DISTILL_FAULT_SEED={SEED}", o["trial"], o["stage"], o["problems"])
        assert not o["leftovers"], (f"DISTILL_FAULT_SEED={SEED}", o["trial"], o["leftovers"])
    stages = [o["stage"] for o in outcomes]
    print(f"\n{len(outcomes)} interrupted translation runs, all resumed bit-identical; stopped in: {stages}")
    assert "teacher outputs" in stages, stages


@pytest.fixture(scope="module", params=["exact", "compact"])
def store_setup(tmp_path_factory, request):
    """Translation with teacher.cache: top-8 soft labels in shards of 40 examples (14 shards),
    in either format (compact: 5-bit log-probabilities)."""
    tmp = tmp_path_factory.mktemp(f"storefaults_{request.param}")
    teacher = save_tiny_marian(tmp / "teacher")
    data = write_csv(tmp / "pairs.csv", translation_rows(600))
    raw = translation_recipe(
        teacher,
        data,
        tmp / "unused",
        teacher={
            "cache": True,
            "cache_top_k": 8,
            "cache_shard_size": 40,
            "cache_format": request.param,
            **({"cache_bits": 5} if request.param == "compact" else {}),
        },
        train={"steps": 6, "checkpoint_every": 1, "keep_checkpoints": 2, "log_every": 4},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp / "r.yaml", raw)
    reference = tmp / "reference"
    proc = subprocess.run(
        command(recipe, reference), env=env(tmp), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, recipe, reference, 0.0


STORE_TRIALS = [
    Trial("teacher_outputs/settings.json", 0.0),
    Trial("teacher_outputs/shard_00002.safetensors", 0.0),
    Trial("teacher_outputs/shard_00006.safetensors.json", 0.01, signal.SIGTERM),
    Trial("teacher_outputs/complete.json", 0.0),
]


def test_interrupted_teacher_store_resumes_to_the_same_store_and_weights(store_setup):
    from safetensors.torch import load_file

    tmp, _, reference, _ = store_setup

    def shards(folder):
        return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard_*.safetensors"))}

    expected = shards(reference / "teacher_outputs")
    assert len(expected) == 14
    compact = json.loads((reference / "teacher_outputs" / "complete.json").read_text()).get(
        "teacher.cache_format"
    )
    assert ("codes" in expected["shard_00000.safetensors"]) == (compact == "compact-1")
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda it: run_trial(*it, store_setup, keep=True), enumerate(STORE_TRIALS)))
    for index, o in enumerate(outcomes):
        assert not o["problems"], (f"DISTILL_FAULT_SEED={SEED}", o["trial"], o["stage"], o["problems"])
        assert not o["leftovers"], (f"DISTILL_FAULT_SEED={SEED}", o["trial"], o["leftovers"])
        got = shards(tmp / f"trial{index}" / "teacher_outputs")
        assert got.keys() == expected.keys()
        for name, tensors in got.items():
            assert all(torch.equal(tensors[k], expected[name][k]) for k in tensors), (o["trial"], name)
    stages = [o["stage"] for o in outcomes]
    print(f"\n{len(outcomes)} interrupted cached runs, all resumed bit-identical; stopped in: {stages}")
    assert "teacher outputs" in stages, stages
