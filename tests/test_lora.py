"""LoRA students (PEFT): only the adapters and the head train, the shipped student is a plain
transformers folder with them merged in, the adapter beside it, and resume is exact."""

from __future__ import annotations

import json

import torch
from conftest import read_report, recipe_dict, save_tiny_bert, write_recipe
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from distill.cli import main


def lora_recipe(tmp_path, data_csv, out, **train):
    teacher = save_tiny_bert(tmp_path / "teacher")
    student = save_tiny_bert(tmp_path / "pretrained", seed=3, num_hidden_layers=2)
    raw = recipe_dict(
        teacher,
        data_csv,
        out,
        student={"init": "pretrained", "name_or_path": str(student), "lora": {"enabled": True, "r": 4}},
        train={"learning_rate": 1e-2, **train},
        eval={"latency": False},
    )
    return write_recipe(tmp_path / "r.yaml", raw), student


def test_a_lora_student_ships_merged_with_its_adapter_beside_it(tmp_path, data_csv):
    out = tmp_path / "out"
    recipe, pretrained = lora_recipe(tmp_path, data_csv, out, baseline=True)
    assert main(["run", str(recipe)]) == 0

    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(out / "student" / "model.safetensors"))
    assert set(after) == set(before)  # a plain model: no adapter weights in it
    attention = "bert.encoder.layer.0.attention.self"
    assert torch.equal(
        after["bert.embeddings.word_embeddings.weight"], before["bert.embeddings.word_embeddings.weight"]
    )
    assert torch.equal(after[f"{attention}.key.weight"], before[f"{attention}.key.weight"])  # not adapted
    assert not torch.equal(after[f"{attention}.query.weight"], before[f"{attention}.query.weight"])  # merged
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])  # the head trains

    # The adapter applied to the pretrained student and merged is the shipped student.
    base = AutoModelForSequenceClassification.from_pretrained(pretrained)
    merged = PeftModel.from_pretrained(base, out / "student_adapter").merge_and_unload().state_dict()
    for key, tensor in after.items():
        assert torch.allclose(merged[key], tensor, atol=1e-6), key
    assert (out / "baseline_adapter" / "adapter_config.json").is_file()
    assert "LoRA adapters (rank 4" in (out / "student" / "README.md").read_text()

    # The report measured the merged folders: distill evaluate finds the same figures.
    assert main(["evaluate", str(recipe), "--out", str(tmp_path / "again")]) == 0
    report, again = read_report(out), read_report(tmp_path / "again")
    for name in ("student", "baseline"):
        assert again["by_name"][name]["metrics"] == report["by_name"][name]["metrics"], name


def test_a_lora_run_killed_mid_stage_resumes_to_the_same_weights(tmp_path, data_csv):
    from test_faults import killed_mid_stage_and_resumed

    recipe, _ = lora_recipe(tmp_path, data_csv, tmp_path / "unused", steps=8, checkpoint_every=1, log_every=3)
    reference, out = killed_mid_stage_and_resumed(recipe, tmp_path, "stages/distill/checkpoints/step_4")
    for folder, file in (("student", "model.safetensors"), ("student_adapter", "adapter_model.safetensors")):
        a, b = (load_file(str(d / folder / file)) for d in (reference, out))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), folder
    history = [json.loads((d / "results.json").read_text())["history"] for d in (reference, out)]
    assert history[0] == history[1]


def test_validate_refuses_adapters_the_student_cannot_take(tmp_path, data_csv, capsys):
    recipe, _ = lora_recipe(tmp_path, data_csv, tmp_path / "out")
    assert main(["validate", str(recipe), "student.lora.target_modules=[no_such_module]"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("distill: error: student.lora: cannot add adapters to the bert student")
    assert "\n" not in error
    assert (
        main(
            [
                "validate",
                str(recipe),
                "student.init=from_config",
                "student.config_overrides={num_hidden_layers: 1}",
            ]
        )
        == 2
    )
    assert "adapters on a randomly initialised student" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lora_under_sharded_training_is_refused(tmp_path, data_csv, capsys, monkeypatch):
    recipe, _ = lora_recipe(tmp_path, data_csv, tmp_path / "out")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch --use_fsdp` sets it
    assert main(["validate", str(recipe)]) == 2
    assert "student.lora: LoRA students are not trained under FSDP yet" in capsys.readouterr().err
