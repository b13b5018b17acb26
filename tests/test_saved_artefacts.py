"""The report is the truth about the files: every model it measures is the one reloaded from its
folder by plain transformers, and translation is scored against the raw target text."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
from accelerate import Accelerator
from conftest import (
    make_seq2seq_tokenizer,
    read_report,
    recipe_dict,
    save_seq2seq,
    save_tiny_bert,
    tiny_marian_config,
    translation_recipe,
    write_recipe,
)
from datasets import Dataset, DatasetDict
from transformers import MarianMTModel

from distill.artefacts import check_reload, reload, ship
from distill.batches import make_dataloader
from distill.cli import main
from distill.config import DataConfig, LossConfig, TrainConfig
from distill.errors import RunFailed
from distill.loop import LossStep, StageData, evaluate, train
from distill.modeling import copy_encoder_decoder_layers, freeze
from distill.tasks import translation


@pytest.mark.parametrize("family", ["bert", "marian", "bart", "t5"])
def test_the_run_report_equals_an_evaluation_of_the_saved_folders(family, tmp_path, data_csv, pairs_csv):
    out = tmp_path / "out"
    settings = {"train": {"steps": 5, "learning_rate": 1e-2}, "eval": {"latency": False}}
    if family == "bert":
        raw = recipe_dict(save_tiny_bert(tmp_path / "teacher"), data_csv, out, **settings)
    else:
        raw = translation_recipe(save_seq2seq(tmp_path / "teacher", family), pairs_csv, out, **settings)
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    measured = read_report(out)["by_name"]
    # `distill evaluate` loads every model from its folder: it must find the run's figures exactly.
    assert (
        main(["evaluate", str(recipe), "--student", str(out / "student"), "--out", str(tmp_path / "again")])
        == 0
    )
    again = read_report(tmp_path / "again")["by_name"]
    for name in ("teacher", "student"):
        assert again[name]["metrics"] == measured[name]["metrics"], (family, name)


def test_parameters_save_pretrained_drops_are_not_trained(tmp_path, translation_tokenized, capsys):
    """Marian's sinusoidal position tables are parameters that save_pretrained leaves out: they are
    frozen, so the reloaded student gives the trained one's outputs."""
    tok, data = translation_tokenized
    teacher = freeze(MarianMTModel(tiny_marian_config(len(tok), dropout=0.0)))
    student = copy_encoder_decoder_layers(teacher, [0, 1], [0, 3])
    for side in (student.model.encoder, student.model.decoder):
        side.embed_positions.weight.requires_grad_(True)  # as from_pretrained leaves them
    positions = student.model.decoder.embed_positions.weight.detach().clone()
    accelerator = Accelerator()
    model, _ = train(
        accelerator,
        name="distill",
        cfg=TrainConfig(steps=5, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1),
        student=student,
        loss_step=LossStep(translation, LossConfig(alpha=0.5), teacher=teacher),
        data=StageData(data, data, translation.collator(tok, teacher.config), translation, 8, tokenizer=tok),
        stage_dir=tmp_path / "stage",
        resume=False,
    )
    assert (
        "not training model.encoder.embed_positions.weight, model.decoder.embed_positions.weight"
        in capsys.readouterr().out
    )
    model = accelerator.unwrap_model(model)
    assert torch.equal(model.model.decoder.embed_positions.weight, positions)
    batch = translation.collator(tok, teacher.config)([data[i] for i in range(4)])
    ship(accelerator, translation, "distill", model, tok, tmp_path / "student", batch)

    # What training them did before: the saved folder no longer reproduces the model.
    with torch.no_grad():
        model.model.decoder.embed_positions.weight.add_(0.05)
    with pytest.raises(RunFailed, match="the saved model does not reproduce the trained one"):
        check_reload(
            "distill",
            model,
            reload(translation, tmp_path / "student", accelerator.device),
            translation,
            batch,
            accelerator,
        )


def test_translation_is_scored_against_the_raw_target_text(tmp_path):
    """An unknown word and a target longer than max_target_length stay in the reference."""
    tok = make_seq2seq_tokenizer(tmp_path / "tok")
    rows = [
        {"source": "one red cat", "target": "un chat rouge"},
        {"source": "two dogs", "target": "deux zèbres"},  # "zèbres" is not in the vocabulary
        {"source": "one two three four", "target": "un deux trois quatre cinq six sept huit neuf"},
    ]
    splits = DatasetDict(test=Dataset.from_list(rows))
    cfg = DataConfig(files={"train": "unused"}, source_column="s", target_column="t", max_target_length=4)
    tokenized = translation.tokenize(splits, tok, cfg)["test"]
    assert tokenized["reference"] == [r["target"] for r in rows]
    torch.manual_seed(0)
    model = MarianMTModel(tiny_marian_config(len(tok))).eval()
    collate = translation.collator(tok, model.config)
    accelerator = Accelerator()
    settings = type("S", (), {"num_beams": 1, "max_new_tokens": 6, "metrics": []})()
    dl = accelerator.prepare(make_dataloader(tokenized, 2, collate, shuffle=False, seed=0))
    scores = evaluate(accelerator, model, dl, translation, tokenizer=tok, settings=settings)
    batch = collate([tokenized[i] for i in range(3)])
    outputs = translation.decode(
        tok,
        model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=1,
            max_new_tokens=6,
        ).tolist(),
    )
    raw = [r["target"] for r in rows]
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, [raw]).score)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [raw]).score)
    # The decoded labels lose the unknown word and the cut words: scoring against them differs.
    cut = translation.decode(tok, [list(x) for x in tokenized["labels"]])
    assert cut[1] == "deux" and cut[2] == "un deux trois"
    assert sacrebleu.corpus_chrf(outputs, [cut]).score != pytest.approx(scores["chrf"])


def test_results_and_report_are_strict_json(tmp_path, data_csv):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(save_tiny_bert(tmp_path / "t"), data_csv, out))
    assert main(["run", str(recipe), "eval.latency=false"]) == 0
    for name in ("results.json", "report.json", "complete.json", "stages/distill/complete.json"):
        json.loads((out / name).read_text(), parse_constant=lambda c, n=name: pytest.fail(f"{n}: {c}"))
