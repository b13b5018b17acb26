"""What a run tells trackers (TensorBoard, MLflow through its file store) and Python callbacks:
every loss component, the learning rate, the gradient norm, examples/s and the validation metrics,
the same values as the run's own history."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from api_objects import objects, recipe
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import distill
from distill.errors import DistillError


class Recorder(distill.Callback):
    def __init__(self):
        self.events = []

    def on_log(self, stage, step, logs):
        self.events.append(("log", stage, step, logs))

    def on_evaluate(self, stage, step, metrics):
        self.events.append(("evaluate", stage, step, metrics))

    def on_checkpoint(self, stage, step, path):
        self.events.append(("checkpoint", stage, step, (path.name, (path / "manifest.json").is_file())))

    def on_stage_end(self, stage, folder, metrics):
        self.events.append(("stage_end", stage, folder.name, (metrics, (folder / "config.json").is_file())))


def of(events, kind, stage):
    return [(step, value) for k, s, step, value in events if k == kind and s == stage]


def test_trackers_and_callbacks_get_the_history(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it, in maintenance
    teacher, tokenizer, data = objects("classification")
    out = tmp_path / "out"
    raw = recipe("classification", out)
    raw["train"].update(report_to=["tensorboard", "mlflow"], eval_every=3, checkpoint_every=2)
    recorder = Recorder()
    result = distill.run(raw, teacher=teacher, tokenizer=tokenizer, data=data, callbacks=[recorder])
    history = result.results["history"]
    trained = [h for h in history if "train/loss" in h]
    validated = [h for h in history if "validation/accuracy" in h]
    assert [h["step"] for h in trained] == [2, 4, 6] and [h["step"] for h in validated] == [3, 6]
    assert all(h["train/grad_norm"] > 0 and h["train/soft"] > 0 for h in trained)

    # Callbacks: the same entries, plus the machine's examples/s; checkpoints on disk when told.
    logs = of(recorder.events, "log", "distill")
    assert [step for step, _ in logs] == [2, 4, 6]
    assert [{k: v for k, v in entry.items() if k != "train/examples_per_s"} for _, entry in logs] == trained
    assert all(entry["train/examples_per_s"] > 0 for _, entry in logs)
    assert [
        (s, {f"validation/{k}": v for k, v in m.items()})
        for s, m in of(recorder.events, "evaluate", "distill")
    ] == [(h["step"], {k: v for k, v in h.items() if k != "step"}) for h in validated]
    assert of(recorder.events, "checkpoint", "distill") == [(2, ("step_2", True)), (4, ("step_4", True))]
    ends = [(stage, folder, found) for kind, stage, folder, found in recorder.events if kind == "stage_end"]
    assert [(stage, folder) for stage, folder, _ in ends] == [
        ("teacher-finetune", "teacher"),
        ("distill", "student"),
        ("baseline", "baseline"),
    ]
    assert all(saved for _, _, (_, saved) in ends)
    assert ends[1][2][0] == result.results["student_validation"]

    # MLflow (its file store, no server): the run named after its folder, the same values.
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("distill")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "out" and run.data.params["train.steps"] == "6"
    for key in ("train/loss", "train/hard", "train/soft", "lr", "train/grad_norm"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"distill/{key}")]
        assert sorted(logged) == [(h["step"], pytest.approx(h[key], rel=1e-12)) for h in trained], key
    logged = client.get_metric_history(run.info.run_id, "distill/validation/accuracy")
    assert sorted((m.step, m.value) for m in logged) == [
        (h["step"], h["validation/accuracy"]) for h in validated
    ]
    speeds = client.get_metric_history(run.info.run_id, "distill/train/examples_per_s")
    assert len(speeds) == 3 and all(m.value > 0 for m in speeds)
    assert client.get_metric_history(run.info.run_id, "baseline/train/loss")
    # Terms that are always 0 get no chart: no hidden-state loss here, no soft labels for the baseline.
    assert not client.get_metric_history(run.info.run_id, "distill/train/hidden")
    assert not client.get_metric_history(run.info.run_id, "baseline/train/soft")
    assert all("train/hidden" not in h for h in trained)
    assert mlflow.active_run() is None  # ended with the run

    # TensorBoard: one run per stage under OUTPUT/logs with the same tags (the student's curves
    # overlay the baseline's), the same values (stored as float32).
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["baseline", "distill", "teacher-finetune"]
    events = EventAccumulator(str(out / "logs" / "distill")).Reload()
    for key in ("train/loss", "train/soft", "lr", "train/grad_norm"):
        scalars = [(e.step, e.value) for e in events.Scalars(key)]
        assert scalars == [(h["step"], pytest.approx(h[key], rel=1e-6)) for h in trained], key
    baseline = EventAccumulator(str(out / "logs" / "baseline")).Reload()
    history = result.results["baseline_history"]
    assert [(e.step, e.value) for e in baseline.Scalars("validation/accuracy")] == [
        (h["step"], pytest.approx(h["validation/accuracy"], rel=1e-6))
        for h in history
        if "validation/accuracy" in h
    ]
    assert "train/soft" not in baseline.Tags()["scalars"] and "recipe" in str(baseline.Tags()["tensors"])


def test_trackers_are_checked_before_anything_is_written(tmp_path):
    teacher, tokenizer, data = objects("classification")
    out = tmp_path / "out"
    for report_to, message in (
        (["wandb"], r"train.report_to: wandb is not installed here \(pip install wandb\)"),
        (["tensorbord"], r"train.report_to\[0\]: must be one of tensorboard, .*did you mean 'tensorboard'"),
        (["mlflow", "mlflow"], r"train.report_to: a tracker is named twice"),
    ):
        raw = recipe("classification", out)
        raw["train"]["report_to"] = report_to
        with pytest.raises(DistillError, match=message):
            distill.validate(raw, teacher=teacher, tokenizer=tokenizer, data=data)
    with pytest.raises(DistillError, match=r"callbacks=: instances of distill.Callback"):
        distill.run(
            recipe("classification", out), teacher=teacher, tokenizer=tokenizer, data=data, callbacks=[print]
        )
    assert not out.exists()


def test_no_trackers_writes_no_logs(tmp_path):
    teacher, tokenizer, data = objects("classification")
    out = tmp_path / "out"
    raw = recipe("classification", out)
    raw["train"].update(report_to=[], steps=2, baseline=False)
    raw["teacher"]["finetune"]["enabled"] = False
    distill.run(raw, teacher=teacher, tokenizer=tokenizer, data=data)
    assert (out / "student").is_dir() and not Path(out / "logs").exists()


def test_a_tracker_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys):
    from conftest import write_recipe

    from distill.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from conftest import save_tiny_bert, sentiment_rows, write_csv

    raw = recipe("classification", tmp_path / "out")
    raw["teacher"] = {"name_or_path": str(save_tiny_bert(tmp_path / "teacher"))}
    raw["data"]["files"] = {"train": str(write_csv(tmp_path / "d.csv", sentiment_rows(300)))}
    raw["train"]["report_to"] = ["mlflow"]
    capsys.readouterr()
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "distill: error: train.report_to: a tracker of ['mlflow'] could not"
    ), err
