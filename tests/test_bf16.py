"""bf16 end to end, as users run on GPUs (bf16 autocast runs on this CPU too): every task and stage
finishes, the saved folders reloaded by plain transformers reproduce the report in the precision it
was measured in, and the reload check still catches a saved model that differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import (
    read_report,
    recipe_dict,
    save_tiny_bert,
    save_tiny_marian,
    translation_recipe,
    write_recipe,
)
from test_causal_lm import causal_recipe, save_causal
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.artefacts import ship
from distill.cli import main
from distill.config import load_recipe
from distill.errors import RunFailed
from distill.plan import prepare
from distill.tasks import classification

ROOT = Path(__file__).resolve().parent.parent
BF16 = {"mixed_precision": "bf16", "baseline": True}


def run_and_reevaluate(recipe: Path, out: Path, again: Path) -> tuple[dict, dict]:
    """``distill run`` in bf16, then ``distill evaluate`` of the saved folders: both reports."""
    assert main(["run", str(recipe)]) == 0
    assert main(["evaluate", str(recipe), "--out", str(again), "eval.latency=false"]) == 0
    return read_report(out), read_report(again)


def assert_reproduced(report: dict, again: dict, models=("teacher", "student", "baseline")) -> None:
    assert report["mixed_precision"] == again["mixed_precision"] == "bf16"
    for name in models:
        row = report["by_name"][name]
        assert row["precision"] == "bf16 autocast" and row["dtype"] == "float32", row
        assert again["by_name"][name]["metrics"] == row["metrics"], name


def test_classification_in_bf16_every_stage(tmp_path, data_csv):
    """Teacher fine-tuning, hidden-state and soft-label KD, the baseline, the report."""
    out = tmp_path / "out"
    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"),
        data_csv,
        out,
        teacher={"finetune": {"enabled": True, "steps": 4, "batch_size": 8, "learning_rate": 1e-3}},
        loss={"hidden": "mse", "hidden_weight": 1.0},
        train={**BF16, "learning_rate": 1e-2},
        eval={"latency_batch_sizes": [4]},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    report, again = run_and_reevaluate(recipe, out, tmp_path / "again")
    assert_reproduced(report, again)
    assert report["by_name"]["student"]["latency"]["forward"]["batch_4"]["ms_per_example"] > 0
    assert "| bf16 autocast |" in (out / "report.md").read_text()
    assert (
        json.loads((out / "teacher" / "distill_finetune.json").read_text())["settings"][
            "train.mixed_precision"
        ]
        == "bf16"
    )

    # Plain transformers, as a user loads the student, under the same autocast: the report's accuracy.
    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]
    model = AutoModelForSequenceClassification.from_pretrained(out / "student").eval()
    tok = AutoTokenizer.from_pretrained(out / "student")
    batch = tok(list(test["text"]), padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        predicted = model(**batch).logits.argmax(-1)
    accuracy = (predicted == torch.tensor(list(test["labels"]))).float().mean().item()
    assert accuracy == pytest.approx(report["by_name"]["student"]["metrics"]["accuracy"])


@pytest.mark.parametrize("store_format", ["exact", "compact"])
def test_translation_in_bf16_with_sequence_kd_and_a_teacher_store(tmp_path, pairs_csv, store_format):
    out = tmp_path / "out"
    raw = translation_recipe(
        save_tiny_marian(tmp_path / "teacher"),
        pairs_csv,
        out,
        teacher={"cache": True, "cache_format": store_format},
        loss={"sequence_kd": "mix"},
        train=BF16,
    )
    report, again = run_and_reevaluate(write_recipe(tmp_path / "r.yaml", raw), out, tmp_path / "again")
    assert_reproduced(report, again)
    store = json.loads((out / "teacher_outputs" / "complete.json").read_text())
    assert store["train.mixed_precision"] == "bf16"
    assert (
        store.get("teacher.cache_format", "exact") == {"exact": "exact", "compact": "compact-1"}[store_format]
    )
    assert (out / "pseudo_targets" / "complete.json").is_file()


def test_token_classification_in_bf16_every_stage_with_a_teacher_store(tmp_path):
    """A tagger fine-tuned, distilled through the store and the baseline, all under bf16 autocast;
    the saved folders reproduce the report's entity scores."""
    from test_token_classification import save_tagger, tagged_rows, tagger_recipe, write_jsonl

    out = tmp_path / "out"
    raw = tagger_recipe(
        save_tagger(tmp_path / "teacher"),
        write_jsonl(tmp_path / "ner.jsonl", tagged_rows(200)),
        out,
        teacher={"cache": True, "finetune": {"enabled": True, "steps": 4, "batch_size": 8}},
        train=BF16,
        eval={"latency": False},
    )
    report, again = run_and_reevaluate(write_recipe(tmp_path / "r.yaml", raw), out, tmp_path / "again")
    assert_reproduced(report, again)
    assert report["primary_metric"] == "f1"
    assert (
        json.loads((out / "teacher_outputs" / "complete.json").read_text())["train.mixed_precision"] == "bf16"
    )


def test_regression_in_bf16_every_stage_with_a_teacher_store(tmp_path):
    from conftest import write_csv
    from test_regression import regression_recipe, save_regressor, scored_rows

    out = tmp_path / "out"
    raw = regression_recipe(
        save_regressor(tmp_path / "teacher"),
        write_csv(tmp_path / "scores.csv", scored_rows(200)),
        out,
        teacher={"cache": True, "finetune": {"enabled": True, "steps": 4, "batch_size": 8}},
        train=BF16,
        eval={"latency": False},
    )
    report, again = run_and_reevaluate(write_recipe(tmp_path / "r.yaml", raw), out, tmp_path / "again")
    assert_reproduced(report, again)
    assert report["primary_metric"] == "pearson"


def test_multi_label_in_bf16_every_stage_with_a_teacher_store(tmp_path):
    from test_multi_label import labelled_rows, multi_label_recipe, save_multi_label
    from test_token_classification import write_jsonl

    out = tmp_path / "out"
    raw = multi_label_recipe(
        save_multi_label(tmp_path / "teacher"),
        write_jsonl(tmp_path / "tags.jsonl", labelled_rows(200)),
        out,
        teacher={"cache": True, "finetune": {"enabled": True, "steps": 4, "batch_size": 8}},
        train=BF16,
        eval={"latency": False},
    )
    report, again = run_and_reevaluate(write_recipe(tmp_path / "r.yaml", raw), out, tmp_path / "again")
    assert_reproduced(report, again)
    assert report["primary_metric"] == "micro_f1"


def test_causal_lm_in_bf16_with_sequence_kd_and_on_policy_batches(tmp_path, pairs_csv):
    out = tmp_path / "out"
    raw = causal_recipe(
        save_causal(tmp_path / "teacher", "llama"),
        pairs_csv,
        out,
        loss={"sequence_kd": "mix", "on_policy": 0.5},
        train={**BF16, "seed": 5},  # steps 2 and 4 of 6 train on the student's samples
    )
    report, again = run_and_reevaluate(write_recipe(tmp_path / "r.yaml", raw), out, tmp_path / "again")
    assert_reproduced(report, again)
    history = json.loads((out / "results.json").read_text())["history"]
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history if "train/loss" in h)


def test_the_bf16_reload_check_catches_a_perturbed_saved_model(tmp_path):
    """A saved model whose weights differ by less than bf16 shows in its logits is caught by the
    weights; one whose weights are equal but whose saved config computes otherwise, by the logits."""
    save_tiny_bert(tmp_path / "t")
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t")
    with torch.no_grad():  # logits of a few units, as a trained head gives (not a random one's 0.01)
        trained.classifier.weight.mul_(300)
    trained.save_pretrained(tmp_path / "t")
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    batch = dict(tok(["good car", "bad road today"], padding=True, return_tensors="pt"))
    accelerator = Accelerator(mixed_precision="bf16", cpu=True)

    def load():
        return AutoModelForSequenceClassification.from_pretrained(tmp_path / "t").eval()

    ship(accelerator, classification, "distill", load(), tok, tmp_path / "ok", batch)  # unchanged: passes

    def perturb_weights(model):
        model.classifier.weight.mul_(1 + 1e-3)

    def perturb_config(model):
        model.config.layer_norm_eps = 1.0  # read when the model is built: only the reloaded one changes

    for perturb, message in (
        (perturb_weights, "weights classifier.weight differ"),
        (perturb_config, r"logits differ by up to \S+ in bf16 autocast"),
    ):
        model = load()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        saved = model.save_pretrained

        def save_perturbed(folder, *args, _model=model, _perturb=perturb, _saved=saved, _state=state, **kw):
            with torch.no_grad():
                _perturb(_model)
            _saved(folder, *args, **kw)
            _model.load_state_dict(_state)  # the model in memory is the trained one again

        model.save_pretrained = save_perturbed
        with pytest.raises(RunFailed, match=message):
            ship(accelerator, classification, "distill", model, tok, tmp_path / "bad", batch)
        assert not (tmp_path / "bad").exists()  # a folder that fails is never under its real name


def env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(tmp / "hf"),
        **extra,
    }


def test_accelerate_launch_decides_the_precision_unless_the_recipe_says(tmp_path, data_csv):
    """Two processes under `accelerate launch --mixed_precision bf16` train and report in bf16 when
    the recipe leaves the precision open; a recipe that says otherwise is refused in one line."""
    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"), data_csv, tmp_path / "out", eval={"latency": False}
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--mixed_precision", "bf16", "-m", "distill.cli", "run", str(recipe), "train.batch_size=4"),
    ]
    proc = subprocess.run(launch, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_report(tmp_path / "out")
    assert (report["machine"]["processes"], report["mixed_precision"]) == (2, "bf16")
    assert "mixed_precision: bf16" in (tmp_path / "out" / "config.yaml").read_text()

    # The launcher says bf16 and the recipe says no: neither is dropped silently.
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "validate", str(recipe), "train.mixed_precision=no"],
        env=env(tmp_path, ACCELERATE_MIXED_PRECISION="bf16"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "distill: error: train.mixed_precision=no contradicts the launcher's mixed precision bf16"
    )
    # Resuming an unfinished bf16 run without the launcher's bf16 is refused as a changed setting.
    (tmp_path / "out" / "complete.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), "--resume", "train.batch_size=4"],
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "was started with other settings (train.mixed_precision changed)" in proc.stderr, proc.stderr


def test_a_launcher_accumulation_that_differs_is_refused(tmp_path, data_csv, capsys, monkeypatch):
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(save_tiny_bert(tmp_path / "teacher"), data_csv, tmp_path / "out")
    )
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    assert main(["validate", str(recipe)]) == 2
    assert "the launcher's gradient accumulation (4 steps" in capsys.readouterr().err
    assert main(["validate", str(recipe), "train.gradient_accumulation_steps=4"]) == 0


def test_sharding_a_launcher_asks_for_but_cannot_have_is_refused(tmp_path, data_csv, capsys, monkeypatch):
    """DeepSpeed where it is not installed (this venv: the DeepSpeed tests put it on their own
    path) and FSDP on a machine without GPUs (Accelerate would fall back to plain data parallel) are
    refused in one line, before anything is written, by `validate` and by `run`."""
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(save_tiny_bert(tmp_path / "teacher"), data_csv, out)
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as `accelerate launch --use_deepspeed` sets it
    for command in ("validate", "run"):
        assert main([command, str(recipe)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(
            "distill: error: accelerate launch asked for DeepSpeed, which is not installed"
        ), err
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert not out.exists()
    if torch.cuda.is_available():
        return
    # FSDP through the real launcher on this CPU-only machine: the ranks stop before training.
    launch = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2"),
        *("--num_processes", "1", "-m", "distill.cli", "run", str(recipe)),
    ]
    proc = subprocess.run(launch, env=env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (
        "distill: error: accelerate launch asked for FSDP, which Accelerate runs only on GPUs" in proc.stderr
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr.split("distill: error:")[0]  # none from distill's ranks
    assert not out.exists()


def test_a_teacher_sharded_where_it_cannot_be_is_refused(tmp_path, data_csv, capsys, monkeypatch):
    """teacher.shard=true needs FSDP2 training that runs the teacher online: without such a launch,
    with FSDP version 1, beside a teacher store or a device map it is refused in one line by
    `validate`, before anything is written; auto and false pass anywhere."""
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(save_tiny_bert(tmp_path / "teacher"), data_csv, out)
    )
    refused = {
        (): "teacher.shard=true: the teacher is sharded only under FSDP2",
        ("teacher.cache=true",): "teacher.shard: with teacher.cache the student stage reads",
        ("teacher.device_map=auto",): "teacher.shard: a teacher placed by teacher.device_map",
        ("teacher.shard=sometimes",): "teacher.shard: expected true, false or auto, got 'sometimes'",
    }
    capsys.readouterr()  # what saving the teacher printed
    for extra, message in refused.items():
        shard = [] if any(e.startswith("teacher.shard") for e in extra) else ["teacher.shard=true"]
        assert main(["validate", str(recipe), *shard, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"distill: error: {message}"), err
    for setting in ("auto", "false"):
        assert main(["validate", str(recipe), f"teacher.shard={setting}"]) == 0
    # FSDP version 1 (accelerate launch --use_fsdp without --fsdp_version 2), on a machine with an
    # accelerator as far as the checks can tell: refused by name.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setattr("distill.checks.accelerator_available", lambda: True)
    assert main(["validate", str(recipe), "teacher.shard=true"]) == 2
    assert "and this launch shards with FSDP version 1" in capsys.readouterr().err
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert main(["validate", str(recipe), "teacher.shard=true"]) == 0
    assert not out.exists()
