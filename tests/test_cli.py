"""The command line end to end, on tiny local models: outputs, reuse, resume and bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    make_tokenizer,
    read_report,
    recipe_dict,
    sentiment_rows,
    tiny_bert_config,
    write_csv,
    write_recipe,
)
from safetensors.torch import load_file
from transformers import BertModel, pipeline

from distill.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    return main([str(a) for a in args])


def run_cli_process(*args, timeout=300, **env):
    """The CLI in a new process (as a user runs it), with extra environment variables."""
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        timeout=timeout,
    )


def test_run_writes_a_student_that_plain_transformers_loads(tmp_path, teacher_dir, data_csv, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    assert run_cli("run", recipe, "train.steps=4", "student.layers=[1,3]") == 0
    printed = capsys.readouterr().out
    assert "student: keeps" in printed and "speed-up" in printed

    results = json.loads((out / "results.json").read_text())
    assert results["labels"] == ["negative", "neutral", "positive"]
    assert results["student_layers_from_teacher"] == [1, 3]
    report = read_report(out)
    assert report["split"] == "test" and report["examples"] == 40
    teacher, student = report["by_name"]["teacher"], report["by_name"]["student"]
    for row in (teacher, student):
        assert 0.0 <= row["metrics"]["accuracy"] <= 1.0 and 0.0 <= row["metrics"]["macro_f1"] <= 1.0
        assert row["latency"]["forward"]["batch_1"]["ms_per_example"] > 0
    assert student["parameters"] < teacher["parameters"]
    assert student["retained"]["accuracy"] == pytest.approx(
        student["metrics"]["accuracy"] / teacher["metrics"]["accuracy"]
    )
    assert student["speedup"]["forward"]["batch_1"] == pytest.approx(
        teacher["latency"]["forward"]["batch_1"]["ms_per_example"]
        / student["latency"]["forward"]["batch_1"]["ms_per_example"]
    )

    # The resolved config (with the overrides) sits next to the outputs.
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["student"]["layers"] == [1, 3]

    classify = pipeline("text-classification", model=str(out / "student"))
    predictions = classify(["good great love", "awful bad sad"])
    assert {p["label"] for p in predictions} <= {"negative", "neutral", "positive"}
    student = classify.model
    assert student.config.num_hidden_layers == 2
    # The student's logits on the test split reproduce the accuracy in results.json.
    assert (out / "logs").is_dir() and any((out / "logs").rglob("events.out.tfevents.*"))


def test_finetune_stage_saves_and_reuses_the_teacher(tmp_path, data_csv, capsys):
    backbone = tmp_path / "backbone"
    tok = make_tokenizer(backbone)
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tok))).save_pretrained(backbone)  # no classification head
    out = tmp_path / "out"
    raw = recipe_dict(
        backbone, data_csv, out, teacher={"finetune": {"enabled": True, "steps": 8, "batch_size": 8}}
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)

    # Without the fine-tuning stage, a backbone is refused: it has no trained head.
    assert run_cli("run", recipe, "teacher.finetune.enabled=false") == 2
    assert "has no trained task head" in capsys.readouterr().err
    assert not out.exists()

    assert run_cli("run", recipe) == 0
    marker = json.loads((out / "teacher" / "distill_finetune.json").read_text())
    assert set(marker["validation"]) == {"accuracy", "macro_f1"}
    weights = out / "teacher" / "model.safetensors"
    saved = load_file(weights)
    assert "classifier.weight" in saved
    mtime = weights.stat().st_mtime_ns
    first = read_report(out)["by_name"]

    # Second run into the same folder: the fine-tuned teacher is reused, not trained again.
    capsys.readouterr()
    assert run_cli("run", recipe, "output.overwrite=true") == 0
    assert weights.stat().st_mtime_ns == mtime
    assert "teacher-finetune" not in capsys.readouterr().err
    second = read_report(out)["by_name"]
    assert second["teacher"]["metrics"]["accuracy"] == first["teacher"]["metrics"]["accuracy"]
    assert second["student"]["metrics"]["accuracy"] == first["student"]["metrics"]["accuracy"]

    # A fresh run with the same recipe fine-tunes the same teacher, bit for bit (head init seeded).
    assert run_cli("run", recipe, f"output.dir={tmp_path / 'again'}") == 0
    again = load_file(tmp_path / "again" / "teacher" / "model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved)

    # A teacher saved before a stage setting existed was trained with its default: still reused.
    marker_path = out / "teacher" / "distill_finetune.json"
    older = json.loads(marker_path.read_text())
    del older["settings"]["teacher.finetune.group_by_length"]
    marker_path.write_text(json.dumps(older))
    assert run_cli("run", recipe, "output.overwrite=true") == 0
    assert weights.stat().st_mtime_ns == mtime
    assert run_cli("run", recipe, "output.overwrite=true", "teacher.finetune.group_by_length=true") == 2
    assert "(teacher.finetune.group_by_length changed)" in capsys.readouterr().err

    # Changed fine-tuning settings do not silently reuse the old teacher.
    assert run_cli("run", recipe, "output.overwrite=true", "teacher.finetune.steps=9") == 2
    assert "was trained with other settings (teacher.finetune.steps changed)" in capsys.readouterr().err

    # The teacher has its own seed: another student seed reuses it and trains another student.
    assert run_cli("run", recipe, "output.overwrite=true", "train.seed=7") == 0
    assert weights.stat().st_mtime_ns == mtime
    seven = load_file(out / "student" / "model.safetensors")
    first_student = load_file(tmp_path / "again" / "student" / "model.safetensors")
    assert any(not torch.equal(seven[k], first_student[k]) for k in seven)
    assert run_cli("run", recipe, "output.overwrite=true", "teacher.finetune.seed=7") == 2
    assert "(teacher.finetune.seed changed)" in capsys.readouterr().err


def test_existing_outputs_are_not_overwritten_by_accident(tmp_path, teacher_dir, data_csv, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    assert run_cli("run", recipe, "train.steps=2") == 0
    assert (out / "complete.json").is_file()
    for extra in ([], ["--resume"]):
        assert run_cli("run", recipe, "train.steps=2", *extra) == 2
        assert "holds a finished run; set output.overwrite=true" in capsys.readouterr().err
    # An unfinished run (no completion record) is finished with --resume, never restarted by accident.
    (out / "complete.json").unlink()
    assert run_cli("run", recipe, "train.steps=2") == 2
    assert "holds an unfinished run; pass --resume" in capsys.readouterr().err
    # ... and only with the settings it was started with.
    assert run_cli("run", recipe, "train.steps=3", "--resume") == 2
    assert "was started with other settings (train.steps changed)" in capsys.readouterr().err
    # A key added to the recipe since the folder's run began (absent from its config.yaml) had its
    # default then: the run resumes with the default, and only with it.
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    del recorded["train"]["group_by_length"]
    (out / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert run_cli("run", recipe, "train.steps=2", "--resume", "train.group_by_length=true") == 2
    assert "(train.group_by_length changed)" in capsys.readouterr().err
    assert run_cli("run", recipe, "train.steps=2", "--resume") == 0
    (out / "complete.json").unlink()
    assert run_cli("run", recipe, "train.steps=2", "--resume", "output.overwrite=true") == 2
    assert "choose one" in capsys.readouterr().err
    # A folder with another run's student but no record of how it was made is not written into.
    (out / "config.yaml").unlink()
    assert run_cli("run", recipe, "train.steps=2") == 2
    assert "holds outputs of another run (student" in capsys.readouterr().err
    assert run_cli("run", recipe, "train.steps=2", "output.overwrite=true") == 0


def student_weights(folder):
    return load_file(folder / "student" / "model.safetensors")


def test_resume_continues_exactly(tmp_path, teacher_dir, data_csv):
    """N steps straight == k steps, stop, and a new process resuming for N - k (dropout on)."""
    straight = tmp_path / "straight"
    raw = recipe_dict(
        teacher_dir,
        data_csv,
        straight,
        train={"steps": 10, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 5, "eval_every": 3},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    # 320 training examples / 8 = 40 batches an epoch; 10 steps x 8 = 80 examples: resume lands mid-epoch.
    assert run_cli("run", recipe) == 0
    checkpoints = sorted(p.name for p in (straight / "stages" / "distill" / "checkpoints").iterdir())
    assert checkpoints == ["step_4", "step_8"]

    # What a run stopped after step 4 leaves behind: its config and checkpoint.
    resumed = tmp_path / "resumed"
    (resumed / "stages" / "distill" / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "config.yaml", resumed / "config.yaml")
    shutil.copytree(
        straight / "stages" / "distill" / "checkpoints" / "step_4",
        resumed / "stages" / "distill" / "checkpoints" / "step_4",
    )
    proc = run_cli_process("run", recipe, f"output.dir={resumed}", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout + proc.stderr
    a, b = student_weights(straight), student_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The validation history after the resume point matches too.
    ra, rb = (read_report(d)["by_name"]["student"]["metrics"] for d in (straight, resumed))
    assert ra == rb

    # And a fresh run with another seed does not give the same weights (the check can fail).
    other = tmp_path / "other"
    assert run_cli("run", recipe, f"output.dir={other}", "train.seed=7") == 0
    c = student_weights(other)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_checkpoints_hold_no_teacher(tmp_path, teacher_dir, data_csv):
    out = tmp_path / "out"
    raw = recipe_dict(
        teacher_dir, data_csv, out, train={"steps": 3, "checkpoint_every": 2}, eval={"latency": False}
    )
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", raw)) == 0
    checkpoint = out / "stages" / "distill" / "checkpoints" / "step_2"
    model_files = sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("model"))
    assert model_files == ["model.safetensors"]  # one model: the student
    saved = load_file(checkpoint / "model.safetensors")
    assert sum(v.numel() for v in saved.values()) == sum(v.numel() for v in student_weights(out).values())


def test_validate_and_recipes(tmp_path, teacher_dir, data_csv, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    assert run_cli("validate", recipe) == 0
    printed = capsys.readouterr().out
    assert "recipe OK" in printed and "['negative', 'neutral', 'positive']" in printed
    assert "train 320, test 40, validation 40" in printed or "train 320, validation 40, test 40" in printed
    assert not out.exists()  # validation writes nothing
    assert run_cli("recipes") == 0
    listing = capsys.readouterr().out
    assert "quickstart" in listing and "sst2" in listing


def bad_input_cases(tmp_path, teacher_dir, data_csv):
    other_tok = tmp_path / "other_student"
    tok = make_tokenizer(other_tok, extra=["zebra"])
    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config(len(tok))).save_pretrained(other_tok)
    bad_label = write_csv(tmp_path / "bad_label.csv", [{"text": "x", "sentiment": "sarcastic"}])
    empty = tmp_path / "empty.csv"
    empty.write_text("text,sentiment\n")
    return {
        "missing data file": (["data.files.train=/no/such.csv"], "data.files.train: file not found"),
        "unknown column": (["data.text_column=tweet"], "data.text_column: no column 'tweet'"),
        "label outside the label set": (
            [f"data.files={{train: {data_csv}, test: {bad_label}}}"],
            "label 'sarcastic' in split 'test'",
        ),
        "empty split": ([f"data.files={{train: {data_csv}, test: {empty}}}"], "the test split is empty"),
        "mismatched tokenizers": (
            ["student.init=pretrained", f"student.name_or_path={other_tok}"],
            "the student's tokenizer differs from the teacher's",
        ),
        "unknown recipe key": (["loss.temprature=2"], "did you mean 'loss.temperature'"),
        "layer the teacher lacks": (["student.layers=[0,4]"], "student.layers: layer 4 does not exist"),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, teacher_dir, data_csv, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    for case, (overrides, message) in bad_input_cases(tmp_path, teacher_dir, data_csv).items():
        code = run_cli("run", recipe, *overrides)
        err = capsys.readouterr().err.strip()
        assert code == 2, case
        assert err.startswith("distill: error: ") and message in err, (case, err)
        assert "\n" not in err and "Traceback" not in err, case
        assert not out.exists(), case


def test_uncached_hub_id_offline_is_one_line(tmp_path, data_csv):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(Path("nobody/not-a-cached-model"), data_csv, out))
    proc = run_cli_process("run", recipe, timeout=120, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("distill: error: cannot load teacher 'nobody/not-a-cached-model'")
    assert "HF_HUB_OFFLINE" in lines[0]
    assert not out.exists()


def test_evaluate_uncached_hub_student_offline_is_one_line(tmp_path, teacher_dir, data_csv):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, tmp_path / "out"))
    proc = run_cli_process(
        "evaluate",
        recipe,
        "--student",
        "nobody/not-a-cached-student",
        timeout=120,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("distill: error: cannot load student 'nobody/not-a-cached-student': ")
    assert "HF_HUB_OFFLINE" in lines[0]
    assert not (tmp_path / "out").exists()


def test_uncached_hub_dataset_offline_is_one_line(tmp_path, teacher_dir, data_csv):
    out = tmp_path / "out"
    raw = recipe_dict(teacher_dir, data_csv, out)
    raw["data"]["files"] = {}
    raw["data"]["dataset"] = "nobody/not-a-cached-dataset"
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    proc = run_cli_process(
        "validate",
        recipe,
        timeout=120,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "distill: error: cannot load dataset 'nobody/not-a-cached-dataset'"
    )
    assert not out.exists()


def test_training_split_smaller_than_a_batch(tmp_path, teacher_dir, capsys):
    """A training split smaller than one batch is refused with a clear message."""
    data = write_csv(tmp_path / "small.csv", sentiment_rows(30))
    out = tmp_path / "out"
    raw = recipe_dict(
        teacher_dir, data, out, data={"validation_size": 5, "test_size": 5}, train={"batch_size": 32}
    )
    assert run_cli("run", write_recipe(tmp_path / "r.yaml", raw)) == 2
    assert "fewer than one global batch (32 x 1 processes)" in capsys.readouterr().err


def test_a_library_thread_failing_on_a_full_disk_prints_no_traceback(capsys, monkeypatch):
    """TensorBoard's writer thread meeting a full disk says nothing (the main thread says it in one
    line); any other failure in a thread is a bug and keeps its traceback."""
    import errno
    import threading

    from distill import cli

    monkeypatch.setattr(threading, "excepthook", cli._thread_excepthook)
    monkeypatch.setattr(cli, "_thread_disk_problems", [])
    passed_on = []  # what reaches Python's own hook, which prints the traceback
    monkeypatch.setattr(cli, "_default_thread_excepthook", lambda args: passed_on.append(args.exc_value))

    def fail(error: BaseException):
        def target():
            raise error

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    fail(OSError(errno.ENOSPC, "No space left on device", "/out/logs/events"))
    fail(OSError(errno.EROFS, "Read-only file system", "/out/logs/events"))
    assert capsys.readouterr().err == ""
    assert cli._thread_disk_problems == ["No space left on device", "Read-only file system"]
    assert passed_on == []
    fail(ValueError("a bug"))
    assert [str(e) for e in passed_on] == ["a bug"]
