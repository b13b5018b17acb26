"""distill from Python: `distill.run / validate / evaluate` with a recipe as a dict and the teacher,
tokenizer and data as objects in memory, with the command's checks, exact resume and report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from api_objects import TASKS, objects, recipe
from conftest import read_report
from test_faults import env, same_as_reference

import distill
from distill import memory
from distill.errors import DistillError

SCRIPT = Path(__file__).resolve().parent / "api_objects.py"


def test_the_package_names_its_api():
    import distill.stages  # noqa: F401  (a submodule import must not hide distill.run)

    assert set(distill.__all__) <= set(dir(distill))
    assert distill.run.__module__ == "distill.api" and callable(distill.evaluate)
    assert distill.DistillError is DistillError
    with pytest.raises(AttributeError):
        distill.prepare  # noqa: B018  (internal names are not part of the package's surface)


def _script(task: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), task, str(out), *extra]


@pytest.mark.parametrize("task", TASKS)
def test_objects_in_memory_distil_resume_after_kill_and_reproduce(task, tmp_path):
    """A script builds a tiny teacher, tokenizer and DatasetDict in memory and calls distill.run;
    killed (-9) in the middle of the student stage and run again with resume=True, it ends with
    the uninterrupted run's weights and figures; the saved folders reproduce the report."""
    environment = env(tmp_path)
    reference, out = tmp_path / "reference", tmp_path / "out"
    done = subprocess.run(
        _script(task, reference), env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = yaml.safe_load((reference / "config.yaml").read_text())
    assert recorded["teacher"]["name_or_path"].startswith("memory:teacher:")
    assert recorded["data"]["dataset"].startswith("memory:data:") and recorded["data"]["files"] == {}

    proc = subprocess.Popen(
        _script(task, out), env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = out / "stages" / "distill" / "checkpoints" / "step_2"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it was killed"

    teacher, tokenizer, data = objects(task)
    # Other objects than the run started with are refused, naming them (the classification
    # teacher fine-tuned by the run says it first); the same ones, rebuilt in this process, pass.
    _, _, other = objects(task, seed=1)
    said = "trained" if task == "classification" else "started"
    with pytest.raises(DistillError, match=rf"{said} with another data.dataset passed from Python"):
        distill.validate(recipe(task, out), teacher=teacher, tokenizer=tokenizer, data=other, resume=True)
    checked = distill.validate(
        recipe(task, out), teacher=teacher, tokenizer=tokenizer, data=data, resume=True
    )
    assert sum(checked.splits.values()) == 300 if task == "classification" else 240

    resumed = subprocess.run(
        _script(task, out, "--resume"), env=environment, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not same_as_reference(out, reference)

    # The saved student (and baseline), reloaded with plain from_pretrained, give the report's scores.
    again = distill.evaluate(
        recipe(task, out), teacher=teacher, tokenizer=tokenizer, data=data, out=tmp_path / "again"
    )
    first = read_report(out)["by_name"]
    second = {m["name"]: m for m in again["models"]}
    for name in first:
        if name != "teacher":  # the classification teacher was fine-tuned by the run; this one was not
            assert second[name]["metrics"] == first[name]["metrics"], name
    assert not memory._folders and not memory._datasets  # every temporary folder removed


def test_run_from_python_returns_the_folders_and_scores(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    teacher, tokenizer, data = objects("translation")
    out = tmp_path / "out"
    checked = distill.validate(recipe("translation", out), teacher=teacher, tokenizer=tokenizer, data=data)
    assert not out.exists()  # validate writes nothing
    assert checked.splits == {"train": 200, "validation": 20, "test": 20} and checked.labels is None
    result = distill.run(recipe("translation", out), teacher=teacher, tokenizer=tokenizer, data=data)
    assert result.output_dir == out and result.baseline_dir is None
    report = read_report(out)
    assert result.scores == {m["name"]: m["metrics"] for m in report["models"]}
    assert result.primary_metric == "bleu" and result.results["task"] == "translation"
    assert all(path.is_file() for path in result.report_files.values())
    student = AutoModelForSeq2SeqLM.from_pretrained(result.student_dir)
    assert student.config.decoder_layers == 1
    card = (result.student_dir / "README.md").read_text()
    assert "a model passed from Python (`memory:teacher:" in card
    # The caller's teacher is untouched, and the folder's config names it by its fingerprint.
    assert teacher.training and not any(p.grad is not None for p in teacher.parameters())


def test_a_folder_of_objects_passed_from_python_is_not_evaluated_without_them(tmp_path, capsys):
    from distill.cli import main

    teacher, tokenizer, data = objects("translation")
    out = tmp_path / "out"
    distill.run(recipe("translation", out), teacher=teacher, tokenizer=tokenizer, data=data)
    capsys.readouterr()
    assert main(["evaluate", str(out / "config.yaml"), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a teacher passed from Python, which this call was not given" in err[0], (
        err
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda r, t, k, d: distill.run({**r, "teacher": {"name_or_path": t}}),
            r"teacher.name_or_path: expected a string, got a BertForSequenceClassification \(a recipe holds "
            r"plain values; pass models",
        ),
        (lambda r, t, k, d: distill.run(r, teacher=t, data=d), r"teacher=: pass its tokenizer too"),
        (lambda r, t, k, d: distill.run(r, tokenizer=k, data=d), r"tokenizer=: passed with teacher="),
        (
            lambda r, t, k, d: distill.validate(r, teacher=t, tokenizer=k, data=list(d["train"])),
            r"data=: a datasets Dataset or DatasetDict, not a list",
        ),
        (
            lambda r, t, k, d: distill.run(r, teacher="bert", tokenizer=k),
            r"teacher=: a transformers PreTrainedModel",
        ),
        (
            lambda r, t, k, d: distill.run(3),
            r"recipe: a recipe name, a path, a dict or a RecipeConfig, not a int",
        ),
        (lambda r, t, k, d: distill.run(r, overrides="train.steps=2"), r"overrides: a list of key=value"),
    ],
)
def test_wrong_arguments_are_one_short_line(call, message, tmp_path):
    teacher, tokenizer, data = objects("classification")
    out = tmp_path / "out"
    with pytest.raises(DistillError, match=message) as caught:
        call(recipe("classification", out), teacher, tokenizer, data)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    assert not out.exists() and not memory._folders and not memory._datasets


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_objects_in_memory_in_bf16_with_a_loss_term_reproduce_their_report(task, tmp_path):
    """From Python alone, in bf16 (every stage, the teacher's fine-tuning included), with a loss
    term of one's own: the report is measured in bf16 and the saved folders reproduce it."""
    import torch

    def gap(student_outputs, teacher_outputs, batch):  # per-item squared logit gap, summed
        mask = batch["labels"] != -100
        diff = (student_outputs.logits.float() - teacher_outputs.logits.float()) ** 2
        return diff.mean(-1)[mask].sum() if mask.ndim == 2 else diff.mean(-1).sum()

    teacher, tokenizer, data = objects(task)
    out = tmp_path / "out"
    raw = recipe(task, out)
    bf16 = ["train.mixed_precision=bf16"]
    result = distill.run(
        raw,
        teacher=teacher,
        tokenizer=tokenizer,
        data=data,
        overrides=bf16,
        loss_terms=[distill.LossTerm("gap", gap, 0.1)],
    )
    report = read_report(out)
    assert report["mixed_precision"] == "bf16"
    assert {m["precision"] for m in report["models"]} == {"bf16 autocast"}
    assert all("train/gap" in h for h in result.results["history"] if "train/loss" in h)
    assert torch.isfinite(
        torch.tensor([h["train/loss"] for h in result.results["history"] if "train/loss" in h])
    ).all()
    again = distill.evaluate(
        raw, teacher=teacher, tokenizer=tokenizer, data=data, out=tmp_path / "again", overrides=bf16
    )
    second = {m["name"]: m for m in again["models"]}
    assert again["mixed_precision"] == "bf16"
    for name, row in report["by_name"].items():
        if name != "teacher" or task != "classification":  # the run fine-tuned its own teacher
            assert second[name]["metrics"] == row["metrics"], name


def test_a_killed_process_s_model_copies_are_removed_by_the_next(tmp_path, monkeypatch):
    """A model passed from Python is saved to a private folder named by the process; one left
    behind by a process killed before it could remove it is removed when the next one saves."""
    import tempfile

    from conftest import save_tiny_bert
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "tmp" / f"distill-teacher-{int(dead.stdout)}-abc123"
    alive = tmp_path / "tmp" / f"distill-teacher-{os.getppid()}-def456"  # a running process's: kept
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    saved = save_tiny_bert(tmp_path / "teacher")
    model = AutoModelForSequenceClassification.from_pretrained(saved)
    reference = memory.add_model("teacher", model, AutoTokenizer.from_pretrained(saved))
    mine = Path(memory.folder(reference))
    assert not stale.exists() and alive.exists()
    assert mine.parent == tmp_path / "tmp" and mine.name.startswith(f"distill-teacher-{os.getpid()}-")
    assert (mine / "model.safetensors").is_file()
    memory.release([reference])
    assert not mine.exists() and alive.exists()
