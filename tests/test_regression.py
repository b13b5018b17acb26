"""task: regression — one number per example, output matching by squared error, Pearson and
Spearman in the report; the same stages, store, resume and two-process guarantees."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    make_tokenizer,
    read_report,
    tiny_bert_config,
    write_csv,
    write_recipe,
)
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification, pipeline

from distill.cli import main
from distill.config import DataConfig
from distill.errors import DistillError
from distill.losses import hard_mse, soft_mse
from distill.tasks import regression


def scored_rows(n: int, seed: int = 0) -> list[dict]:
    """Texts whose score is the count of positive minus negative words, plus noise."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 3), rng.randint(0, 3)
        words = rng.sample(NEUTRAL, 2) + rng.sample(POSITIVE, pos) + rng.sample(NEGATIVE, neg)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": round(pos - neg + rng.gauss(0, 0.3), 3)})
    return rows


def save_regressor(folder: Path, seed: int = 0, **config_kw) -> Path:
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    config = tiny_bert_config(
        len(tok), num_labels=1, id2label=None, label2id=None, problem_type="regression", **config_kw
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def regression_recipe(teacher_path: Path, data_path: Path, out: Path, **sections) -> dict:
    raw = {
        "task": "regression",
        "teacher": {"name_or_path": str(teacher_path)},
        "student": {"init": "copy_layers", "num_layers": 2},
        "data": {
            "files": {"train": str(data_path)},
            "text_column": "text",
            "label_column": "score",
            "validation_size": 30,
            "test_size": 40,
            "max_length": 16,
        },
        "loss": {"soft": "mse"},
        "train": {"steps": 6, "batch_size": 8, "learning_rate": 3e-3, "log_every": 1},
        "eval": {"latency_examples": 8, "latency_repeats": 1},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def _history(out: Path) -> list[dict]:
    return [h for h in json.loads((out / "results.json").read_text())["history"] if "train/loss" in h]


def test_the_losses_are_summed_squared_errors():
    s, t = torch.tensor([[1.0], [2.0], [0.5]]), torch.tensor([[0.0], [2.5], [0.5]])
    assert soft_mse(s, t, temperature=4.0).item() == pytest.approx(1.0 + 0.25)  # no temperature
    assert hard_mse(s, torch.tensor([1.0, 0.0, 1.5])).item() == pytest.approx(0 + 4 + 1)
    mask = torch.tensor([True, False, True])
    assert soft_mse(s, t, temperature=1.0, mask=mask).item() == pytest.approx(1.0)


def test_correlations_of_known_predictions():
    refs = [1.0, 2.0, 3.0, 4.0]
    scores = regression.compute_metrics([2.0, 4.0, 6.0, 8.5], refs)
    assert scores["spearman"] == pytest.approx(1.0)  # same order
    assert scores["pearson"] == pytest.approx(float(np.corrcoef([2, 4, 6, 8.5], refs)[0, 1]))
    assert scores["mse"] == pytest.approx((1 + 4 + 9 + 4.5**2) / 4)
    assert regression.compute_metrics([1.0, 1.0, 1.0, 1.0], refs)["pearson"] == 0.0  # constant: not NaN


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"text": "a", "score": "high"}, {"text": "b", "score": "low"}], "must hold numbers for regression"),
        (
            [{"text": "a", "score": 1.0}, {"text": "b", "score": -100.0}],
            "the label -100.0 in split 'train' is reserved",
        ),
        ([{"text": "a", "score": 2.0}, {"text": "b", "score": 2.0}], "holds one value only"),
    ],
)
def test_bad_targets_are_refused_in_one_line(rows, message):
    cfg = DataConfig(text_column="text", label_column="score")
    with pytest.raises(DistillError, match=message.replace("(", r"\(").replace(")", r"\)")):
        regression.prepare_targets(DatasetDict(train=Dataset.from_list(rows)), cfg, None, head_trained=False)


def test_regression_needs_the_squared_error_soft_loss(tmp_path, capsys):
    raw = regression_recipe(tmp_path / "t", tmp_path / "d.csv", tmp_path / "out", loss={"soft": "kl"})
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", raw))]) == 2
    assert "set loss.soft=mse" in capsys.readouterr().err


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regressor")
    teacher = save_regressor(tmp / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_csv(tmp / "scores.csv", scored_rows(300))
    return tmp, teacher, data


def test_a_regressor_distils_and_the_saved_student_reproduces_its_report_through_pipeline(
    regressor, tmp_path
):
    _, teacher, data = regressor
    out = tmp_path / "out"
    raw = regression_recipe(
        teacher,
        data,
        out,
        teacher={"finetune": {"enabled": True, "steps": 40, "batch_size": 16, "learning_rate": 3e-3}},
        train={"steps": 20, "baseline": True},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    report = read_report(out)
    assert report["primary_metric"] == "pearson"
    assert (
        report["by_name"]["teacher"]["metrics"]["pearson"] > 0.5
    )  # the fine-tuned teacher has learnt the scores
    student = report["by_name"]["student"]["metrics"]
    assert set(student) >= {"pearson", "spearman", "mse"}
    assert all(h["train/soft"] > 0 for h in _history(out))
    saved = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert saved.config.num_labels == 1 and saved.config.problem_type == "regression"

    from distill.config import load_recipe
    from distill.stages import prepare

    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]
    score = pipeline(
        "text-classification", model=str(out / "student"), function_to_apply="none", device="cpu"
    )
    predicted = [p["score"] for p in score(list(test["text"]), batch_size=8)]
    again = regression.compute_metrics(predicted, list(test["labels"]))
    assert again["pearson"] == pytest.approx(student["pearson"], abs=1e-5)
    assert again["mse"] == pytest.approx(student["mse"], rel=1e-4)


def test_a_regressor_through_the_teacher_store_trains_as_online(regressor, tmp_path):
    _, teacher, data = regressor
    outs = {}
    for cache in (False, True):
        raw = regression_recipe(
            teacher,
            data,
            tmp_path / f"c{cache}",
            teacher={"cache": cache},
            student={"init": "from_config", "config_overrides": {"num_hidden_layers": 2}},
            eval={"latency": False},
        )
        assert main(["run", str(write_recipe(tmp_path / f"r{cache}.yaml", raw))]) == 0
        outs[cache] = tmp_path / f"c{cache}"
    online, stored = (_history(outs[c]) for c in (False, True))
    assert len(online) == 6 and min(h["train/soft"] for h in online) > 1e-7
    assert [h["train/soft"] for h in stored] == pytest.approx([h["train/soft"] for h in online], rel=1e-4)


def test_a_regressor_killed_mid_stage_resumes_bit_for_bit(regressor, tmp_path):
    from test_faults import killed_mid_stage_and_resumed, same_as_reference

    _, _, data = regressor
    raw = regression_recipe(
        save_regressor(tmp_path / "teacher"),  # dropout on: the RNG must be restored too
        data,
        tmp_path / "unused",
        train={"steps": 8, "checkpoint_every": 1, "baseline": True},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    reference, out = killed_mid_stage_and_resumed(recipe, tmp_path, "stages/distill/checkpoints/step_3")
    assert same_as_reference(out, reference) == []


def test_two_processes_regress_as_one(regressor, tmp_path):
    from test_distributed import one_and_two_processes

    _, teacher, data = regressor
    raw = regression_recipe(
        teacher,
        data,
        tmp_path / "unused",
        data={"validation_size": 31, "test_size": 41},
        eval={"batch_size": 8, "latency": False},
    )
    one, two, _ = one_and_two_processes(write_recipe(tmp_path / "r.yaml", raw), tmp_path)
    assert [h["train/loss"] for h in _history(one)] == pytest.approx(
        [h["train/loss"] for h in _history(two)], rel=1e-4
    )
    ra, rb = read_report(one), read_report(two)
    assert ra["examples"] == rb["examples"] == 41
    for model in ("teacher", "student"):
        assert ra["by_name"][model]["metrics"] == pytest.approx(rb["by_name"][model]["metrics"], rel=1e-4), (
            model
        )


@pytest.mark.parametrize("family", ["roberta", "qwen2"])
def test_regressor_family_matrix(family, regressor, tmp_path):
    """An encoder and a decoder-only regressor (no pad token): validate, a short run, the saved
    student's scores through pipeline reproducing the report."""
    from test_families import encoder_config, qwen2_tokenizer

    _, _, data = regressor
    folder = tmp_path / "teacher"
    tok = qwen2_tokenizer(folder) if family == "qwen2" else make_tokenizer(folder)
    config = encoder_config(family, len(tok))
    config.num_labels, config.problem_type = 1, "regression"
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    if family == "qwen2":
        config.pad_token_id = None
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", regression_recipe(folder, data, out, train={"steps": 3}, eval={"latency": False})
    )
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    student = read_report(out)["by_name"]["student"]["metrics"]

    from distill.config import load_recipe
    from distill.stages import prepare

    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]
    score = pipeline(
        "text-classification", model=str(out / "student"), function_to_apply="none", device="cpu"
    )
    predicted = [p["score"] for p in score(list(test["text"]), batch_size=8)]
    assert regression.compute_metrics(predicted, list(test["labels"]))["mse"] == pytest.approx(
        student["mse"], rel=1e-4
    )


def test_a_classifier_distils_with_matched_logits(tmp_path, teacher_dir, data_csv):
    """loss.soft=mse for classification: the logits matched by squared error (no temperature)."""
    from conftest import recipe_dict

    out = tmp_path / "out"
    raw = recipe_dict(
        teacher_dir, data_csv, out, loss={"soft": "mse", "temperature": 7.0}, eval={"latency": False}
    )
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", raw)), "train.steps=3"]) == 0
    first = _history(out)[0]
    assert first["train/soft"] > 0
    assert first["train/loss"] == pytest.approx(
        0.5 * first["train/soft"] + 0.5 * first["train/hard"], rel=1e-5
    )
