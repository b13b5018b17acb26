"""Teachers built from scratch: synthetic num2words data, a trained tokenizer, the teacher.train stage."""

import json
from pathlib import Path

from conftest import read_report, translation_recipe, write_recipe
from transformers import AutoTokenizer

from distill.cli import main


def test_teacher_built_and_trained_from_scratch_on_num2words(tmp_path, capsys):
    """The offline recipe's path in miniature: synthetic data, a trained tokenizer, a teacher.train stage."""
    out = tmp_path / "out"
    raw = translation_recipe(Path("unused"), Path("unused"), out)
    raw["teacher"] = {
        "name_or_path": "",
        "architecture": {
            "model_type": "marian",
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
        },
        "tokenizer_vocab_size": 300,
        "train": {"enabled": True, "steps": 6, "batch_size": 8},
    }
    raw["data"] = {
        "synthetic": "num2words",
        "source_column": "en",
        "target_column": "fr",
        "synthetic_examples": 300,
        "validation_size": 20,
        "test_size": 30,
        "max_length": 48,
        "max_target_length": 48,
        "seed": 3,
    }
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe), "eval.latency=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert read_report(out)["examples"] == 30 and results["train_examples"] == 250
    tok = AutoTokenizer.from_pretrained(out / "teacher")
    assert (
        tok.decode(tok("quatre-vingt-dix-neuvième")["input_ids"], skip_special_tokens=True)
        == "quatre-vingt-dix-neuvième"
    )
    student_tok = AutoTokenizer.from_pretrained(out / "student")
    assert student_tok.get_vocab() == tok.get_vocab()
    marker = json.loads((out / "teacher" / "distill_finetune.json").read_text())
    assert marker["settings"]["teacher.train.steps"] == 6
    # A typo in the architecture is caught before anything runs.
    assert main(["run", str(recipe), f"output.dir={tmp_path / 'o2'}", "teacher.architecture.d_modle=16"]) == 2
    assert (
        "teacher.architecture.d_modle: not a field of a marian config (did you mean 'd_model'?)"
        in capsys.readouterr().err
    )


def test_num2words_splits_are_disjoint_by_number():
    from distill.config import DataConfig
    from distill.synthetic import num2words_pairs

    data = DataConfig(
        synthetic="num2words",
        source_column="en",
        target_column="fr",
        synthetic_examples=600,
        validation_size=50,
        test_size=100,
        seed=1,
    )
    splits = num2words_pairs(data)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [450, 50, 100]
    french = {s: set(splits[s]["fr"]) for s in splits}
    assert not (french["train"] & french["test"]) and not (french["train"] & french["validation"])
    assert num2words_pairs(data)["test"]["en"] == splits["test"]["en"]  # seeded
