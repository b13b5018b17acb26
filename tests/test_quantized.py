"""`eval.quantized`: int8 rows for the teacher and the student beside the float ones, measured on
the same batches; a user quantizing the saved folder with plain transformers and torch finds the
same scores."""

from __future__ import annotations

import pytest
import torch
from conftest import read_report, recipe_dict, write_recipe

from distill.cli import main


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_int8_rows_beside_the_float_ones(tmp_path, teacher_dir, data_csv, precision):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    raw = recipe_dict(
        teacher_dir,
        data_csv,
        out,
        train={"steps": 3, "mixed_precision": precision},
        eval={
            "quantized": True,
            "latency": True,
            "latency_examples": 4,
            "latency_repeats": 1,
            "latency_batch_sizes": [1],
        },
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    report = read_report(out)
    rows = report["by_name"]
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "teacher-int8", "student-int8"]
    for name in ("teacher", "student"):
        float_row, int8 = rows[name], rows[f"{name}-int8"]
        assert int8["role"] == name and int8["dtype"] == "int8"
        assert int8["precision"] == "int8 weights, float32 activations"
        assert int8["quantized"]["weights"] == "int8" and int8["quantized"]["saved"] is False
        assert int8["parameters"] == float_row["parameters"]
        assert int8["size_mb"] < 0.8 * float_row["size_mb"]
        assert int8["retained"]["accuracy"] == pytest.approx(
            int8["metrics"]["accuracy"] / rows["teacher"]["metrics"]["accuracy"]
        )
        assert int8["latency"]["forward"]["batch_1"]["ms_per_example"] > 0
    assert report["groups"] == []  # one float model per role: int8 rows are not a second seed
    assert "teacher-int8" in (out / "report.md").read_text()

    # The student folder, loaded and quantized by hand, scores what the report says.
    from distill import tasks
    from distill.config import load_recipe
    from distill.data import load_raw

    cfg = load_recipe(recipe)
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    student = AutoModelForSequenceClassification.from_pretrained(out / "student").eval()
    int8 = torch.ao.quantization.quantize_dynamic(student, {torch.nn.Linear}, dtype=torch.qint8)
    task = tasks.TASKS["classification"]
    raw_data = load_raw(cfg.data, task.columns(cfg.data))
    splits, names = task.prepare_targets(raw_data, cfg.data, student.config, True)
    test = splits["test"]
    enc = tokenizer(
        list(test["text"]), truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        predicted = int8(**enc).logits.argmax(-1)
    accuracy = (predicted == torch.tensor(list(test["labels"]))).float().mean().item()
    assert accuracy == pytest.approx(rows["student-int8"]["metrics"]["accuracy"], abs=1e-9)


def test_int8_rows_of_a_generating_model(tmp_path, pairs_csv):
    from test_causal_lm import causal_recipe, save_causal

    out = tmp_path / "out"
    raw = causal_recipe(
        save_causal(tmp_path / "teacher", "gpt2"),
        pairs_csv,
        out,
        train={"steps": 2},
        eval={"quantized": True},
    )
    assert main(["run", str(write_recipe(tmp_path / "r.yaml", raw))]) == 0
    rows = read_report(out)["by_name"]
    assert rows["student-int8"]["metrics"].keys() == rows["student"]["metrics"].keys()
    assert rows["student-int8"]["size_mb"] < rows["student"]["size_mb"]
