"""Translation: collation, token-level losses, encoder-decoder layer copying, end to end, bad input."""

import json
import logging

import pytest
import torch
from accelerate import Accelerator
from conftest import (
    make_seq2seq_tokenizer,
    marian_pair,
    read_report,
    translation_recipe,
    translation_rows,
    write_csv,
    write_recipe,
)
from transformers import (
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    T5Config,
    T5ForConditionalGeneration,
)

from distill.cli import main
from distill.config import LossConfig
from distill.loop import LossStep, backward_step
from distill.losses import hard_ce
from distill.modeling import copy_encoder_decoder_layers, spread
from distill.tasks import translation as task


def test_collator_pads_labels_and_shifts_decoder_inputs(translation_tokenized):
    tok, data = translation_tokenized
    batch = task.collator(tok, MarianConfig(decoder_start_token_id=0, pad_token_id=0))(
        [data[i] for i in range(4)]
    )
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    assert labels.shape == dec.shape
    for i in range(4):
        ids = data[i]["labels"]
        assert labels[i, : len(ids)].tolist() == ids
        assert (labels[i, len(ids) :] == -100).all()
        assert dec[i, 0].item() == 0 and dec[i, 1 : len(ids)].tolist() == ids[:-1]


def test_items_are_real_target_tokens_and_padding_is_ignored(translation_tokenized):
    tok, data = translation_tokenized
    teacher, student = marian_pair()
    collate = task.collator(tok, teacher.config)
    rows = [data[i] for i in range(5)]
    step = LossStep(task, LossConfig(alpha=0.5, temperature=2.0, chunk_tokens=4), teacher=teacher)
    together = step(student, collate(rows))
    assert together["items"].item() == sum(len(r["labels"]) for r in rows)
    alone = [step(student, collate([r])) for r in rows]
    for key in ("loss", "soft", "hard"):
        assert together[key].item() == pytest.approx(sum(a[key].item() for a in alone), rel=1e-4), key


def test_accumulation_with_uneven_target_lengths_matches_one_batch(translation_tokenized):
    tok, data = translation_tokenized
    collate = task.collator(tok, MarianConfig(decoder_start_token_id=0, pad_token_id=0))
    rows = [data[i] for i in range(8)]
    grads = []
    for sizes in ([8], [3, 5], [1, 1, 6]):
        teacher, student = marian_pair()
        micro, start = [], 0
        for size in sizes:
            micro.append(collate(rows[start : start + size]))
            start += size
        backward_step(Accelerator(), student, LossStep(task, LossConfig(), teacher=teacher), micro)
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    for other in grads[1:]:
        for name, g in grads[0].items():
            assert torch.allclose(g, other[name], atol=1e-7, rtol=1e-4), name
    # A mean over micro-batch means would differ: micro-batches hold different numbers of tokens.
    teacher, student = marian_pair()
    parts = [collate(rows[:1]), collate(rows[1:])]
    terms = [LossStep(task, LossConfig(), teacher=teacher)(student, b) for b in parts]
    mean_of_means = sum(t["loss"] / t["items"] for t in terms) / 2
    global_mean = sum(t["loss"] for t in terms) / sum(t["items"] for t in terms)
    assert abs(mean_of_means.item() - global_mean.item()) > 1e-4


@pytest.mark.parametrize("family", ["marian", "bart", "t5"])
def test_copied_encoder_and_decoder_layers_equal_the_teachers(family):
    torch.manual_seed(0)
    if family == "marian":
        teacher = MarianMTModel(
            MarianConfig(
                vocab_size=40,
                d_model=16,
                encoder_layers=3,
                decoder_layers=4,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                pad_token_id=0,
                decoder_start_token_id=0,
            )
        )
        enc, dec = teacher.model.encoder.layers, teacher.model.decoder.layers
    elif family == "bart":
        teacher = BartForConditionalGeneration(
            BartConfig(
                vocab_size=40,
                d_model=16,
                encoder_layers=3,
                decoder_layers=4,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
            )
        )
        enc, dec = teacher.model.encoder.layers, teacher.model.decoder.layers
    else:
        teacher = T5ForConditionalGeneration(
            T5Config(
                vocab_size=40,
                d_model=16,
                d_kv=8,
                d_ff=32,
                num_layers=3,
                num_decoder_layers=4,
                num_heads=2,
                decoder_start_token_id=0,
            )
        )
        enc, dec = teacher.encoder.block, teacher.decoder.block
    student = copy_encoder_decoder_layers(teacher.eval(), [0, 2], [1, 3]).eval()
    s_enc, s_dec = (
        (student.encoder.block, student.decoder.block)
        if family == "t5"
        else (student.model.encoder.layers, student.model.decoder.layers)
    )
    assert (len(s_enc), len(s_dec)) == (2, 2)
    for s_layers, t_layers, chosen in ((s_enc, enc, [0, 2]), (s_dec, dec, [1, 3])):
        for i, t_i in enumerate(chosen):
            t_state = t_layers[t_i].state_dict()
            for key, value in s_layers[i].state_dict().items():
                if key in t_state:
                    assert torch.equal(value, t_state[key]), (family, i, key)
                else:  # T5: the relative position bias of block 0, taken from the teacher's block 0
                    assert "relative_attention_bias" in key and torch.equal(
                        value, t_layers[0].state_dict()[key]
                    )
    # A full copy reproduces the teacher's outputs.
    full = copy_encoder_decoder_layers(teacher, list(range(3)), list(range(4))).eval()
    x = torch.randint(3, 40, (2, 6))
    d = torch.randint(3, 40, (2, 5))
    assert torch.allclose(
        full(input_ids=x, decoder_input_ids=d).logits,
        teacher(input_ids=x, decoder_input_ids=d).logits,
        atol=1e-5,
    )


def test_spread_keeps_first_and_last():
    assert spread(6, 2) == [0, 5]
    assert spread(6, 3) == [0, 2, 5] or spread(6, 3) == [0, 3, 5]
    assert spread(12, 1) == [0]
    assert spread(4, 4) == [0, 1, 2, 3]


def test_end_to_end_run(tmp_path, marian_dir, pairs_csv, capsys):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", translation_recipe(marian_dir, pairs_csv, out))
    assert main(["run", str(recipe), "train.steps=6"]) == 0
    results = json.loads((out / "results.json").read_text())
    report = read_report(out)
    assert report["task"] == "translation" and report["examples"] == 20
    for name in ("teacher", "student"):
        scores = report["by_name"][name]["metrics"]
        assert 0.0 <= scores["bleu"] <= 100.0 and 0.0 <= scores["chrf"] <= 100.0
        # Greedy and beam generation timed at batch 1 and at the larger batch.
        assert set(report["by_name"][name]["latency"]) == {"greedy", "beam2"}
    assert results["student_layers_from_teacher"] == [0]  # one decoder layer: the first
    student, teacher = report["by_name"]["student"], report["by_name"]["teacher"]
    assert student["retained"]["bleu"] == pytest.approx(
        student["metrics"]["bleu"] / teacher["metrics"]["bleu"]
    )
    student = AutoModelForSeq2SeqLM.from_pretrained(out / "student")
    assert (student.config.encoder_layers, student.config.decoder_layers) == (2, 1)
    generated = student.generate(
        **make_seq2seq_tokenizer(tmp_path / "t")(["one red cat"], return_tensors="pt"), max_new_tokens=5
    )
    assert generated.shape[0] == 1


def test_translation_dict_column_and_missing_language(tmp_path, marian_dir, capsys):
    rows = [{"translation": {"en": r["en"], "fr": r["fr"]}} for r in translation_rows(120)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    raw = translation_recipe(marian_dir, path, tmp_path / "out")
    raw["data"].update(
        {
            "source_column": "",
            "target_column": "",
            "translation_column": "translation",
            "source_lang": "en",
            "target_lang": "fr",
        }
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe), "data.target_lang=de"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "distill: error: data.target_lang: language 'de' is not in column 'translation' of split 'train' (languages: en, fr)"
    )
    assert not (tmp_path / "out").exists()


def test_empty_targets_dropped_and_long_sources_truncated_with_warnings(tmp_path, marian_dir, caplog):
    rows = translation_rows(100)
    rows[3]["fr"] = ""
    rows[7]["fr"] = "   "
    rows[10]["en"] = " ".join(["one two three four five"] * 10)  # 50 words, over max_length 16
    rows[10]["fr"] = "un"
    path = write_csv(tmp_path / "pairs.csv", rows)
    recipe = write_recipe(
        tmp_path / "r.yaml", translation_recipe(marian_dir, path, tmp_path / "out", data={"test_size": 0})
    )
    with caplog.at_level(logging.INFO, logger="distill"):
        assert main(["run", str(recipe), "train.steps=2", "eval.latency=false"]) == 0
    text = caplog.text
    assert "dropped 2 rows with an empty text or label" in text
    assert "1 sources longer than 16 tokens were truncated" in text


def test_step_counts_hard_ce_over_target_tokens(translation_tokenized):
    tok, data = translation_tokenized
    teacher, _ = marian_pair()
    batch = task.collator(tok, teacher.config)([data[i] for i in range(3)])
    out = LossStep(task)(teacher.train(), batch)
    logits = teacher(**task.model_inputs(batch)).logits
    assert out["loss"].item() == pytest.approx(hard_ce(logits, batch["labels"]).item(), rel=1e-5)


@pytest.mark.parametrize("init", ["copy_layers", "from_config", "prune"])
def test_a_student_built_from_the_teacher_generates_with_its_settings(init, tmp_path):
    """NLLB's and mBART-50's forced_bos_token_id, beams and lengths live in generation_config.json:
    a student built from the teacher keeps them, in memory and in its saved folder."""
    from conftest import save_tiny_marian
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig, MarianMTModel

    from distill.config import StudentConfig
    from distill.modeling import build_student

    teacher = MarianMTModel.from_pretrained(save_tiny_marian(tmp_path / "teacher"))
    teacher.generation_config = GenerationConfig.from_dict(
        {**teacher.generation_config.to_dict(), "forced_bos_token_id": 7, "num_beams": 3, "max_length": 40}
    )
    spec = StudentConfig(init=init, num_decoder_layers=1, config_overrides={"decoder_layers": 1})
    student, _ = build_student(spec, teacher, AutoModelForSeq2SeqLM, {})
    student.save_pretrained(tmp_path / "student")
    saved = GenerationConfig.from_pretrained(tmp_path / "student")
    for gen in (student.generation_config, saved):
        assert (gen.forced_bos_token_id, gen.num_beams, gen.max_length) == (7, 3, 40)


def test_a_student_that_cannot_generate_is_refused_before_anything_is_written(tmp_path, pairs_csv, capsys):
    """A T5 student of fewer encoder than decoder layers fails in generate() (an upstream cache
    error): validate and run say so in one line, before training, not after it."""
    from conftest import save_seq2seq, translation_recipe

    teacher = save_seq2seq(tmp_path / "teacher", "t5")
    out = tmp_path / "out"
    raw = translation_recipe(teacher, pairs_csv, out)
    raw["student"] = {"init": "copy_layers", "encoder_layers": [0], "num_decoder_layers": 2}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    capsys.readouterr()  # the teacher's saving
    for command in ("validate", "run"):
        assert main([command, str(recipe)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distill: error: the student cannot generate() (num_beams=1)"), err
        assert "IndexError" in err and "\n" not in err
        assert not out.exists()
    raw["student"]["num_decoder_layers"] = 1  # as deep as its encoder: it generates
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", raw))]) == 0
