"""A teacher and a student that share a tokenizer but whose output layers are padded beyond it to
different sizes (Qwen2.5-7B has 152,064 rows, Qwen2.5-0.5B 151,936, for one tokenizer of 151,665)
distil over the tokenizer's ids: the padded rows never enter a loss, a sample, a sequence-level
target or the store. Both models' padded rows are made "loud" here (far larger logits than any real
token), so any use of them would show."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_report, write_recipe
from safetensors.torch import load_file
from test_causal_lm import causal_recipe, make_causal_tokenizer

from distill.cli import main
from distill.config import LossConfig
from distill.errors import DistillError
from distill.loss_step import LossStep
from distill.losses import soft_kl
from distill.modeling import padded_rows, suppress_in_generation
from distill.tasks import causal_lm

PAD_TEACHER, PAD_STUDENT = 8, 3


def qwen(folder, tok, rows: int, layers: int, seed: int):
    """A tiny Qwen2 causal LM with ``rows`` output rows (tied embeddings), the padded ones loud."""
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        vocab_size=rows,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    model = tf.Qwen2ForCausalLM(config)
    if rows > len(tok):
        with torch.no_grad():
            model.lm_head.weight[len(tok) :] = 50 * model.lm_head.weight[: rows - len(tok)].abs().sign()
    if folder is not None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("padded")
    tok = make_causal_tokenizer(tmp / "teacher")
    n = len(tok)
    qwen(tmp / "teacher", tok, n + PAD_TEACHER, 4, seed=0)
    qwen(tmp / "student", tok, n + PAD_STUDENT, 2, seed=1)
    return tmp, tok, n


def test_the_losses_are_taken_over_the_tokenizers_ids(pair):
    tmp, tok, n = pair
    teacher = qwen(None, tok, n + PAD_TEACHER, 4, seed=0).eval()
    student = qwen(None, tok, n + PAD_STUDENT, 2, seed=1).eval()
    ids = torch.tensor([tok("one two three").input_ids + [1]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    step = LossStep(
        causal_lm, LossConfig(alpha=0.5, temperature=2.0, chunk_tokens=0), teacher=teacher, vocabulary=n
    )
    terms = step(student, batch)
    with torch.no_grad():
        s, t = (
            student(**causal_lm.model_inputs(batch)).logits,
            teacher(**causal_lm.model_inputs(batch)).logits,
        )
    mask = batch["labels"] != -100
    expected = soft_kl(s[..., :n], t[..., :n], temperature=2.0, mask=mask)
    assert terms["soft"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the chunked path (the default) gives the same
    chunked = LossStep(causal_lm, LossConfig(alpha=0.5, temperature=2.0), teacher=teacher, vocabulary=n)
    assert chunked(student, batch)["soft"].item() == pytest.approx(expected.item(), rel=1e-4)
    # with the loud rows in, the loss would be another one entirely
    assert expected.item() != pytest.approx(
        soft_kl(s, t[..., : s.shape[-1]], temperature=2.0, mask=mask).item(), rel=1e-2
    )


def test_samples_never_hold_the_padded_rows(pair):
    tmp, tok, n = pair
    student = qwen(None, tok, n + PAD_STUDENT, 2, seed=1)
    assert padded_rows(student, n) == list(range(n, n + PAD_STUDENT))
    prompts = torch.tensor([tok("one two").input_ids] * 4)
    batch = {causal_lm.PROMPT: prompts, "prompt_mask": torch.ones_like(prompts), "input_ids": prompts}
    loud = causal_lm.sample_completions(student, batch, seeds=[1, 2, 3, 4], temperature=1.0, max_new_tokens=6)
    assert (loud["input_ids"] >= n).any()  # unsuppressed, the loud rows are what it samples
    suppress_in_generation(student, padded_rows(student, n))
    quiet = causal_lm.sample_completions(
        student, batch, seeds=[1, 2, 3, 4], temperature=1.0, max_new_tokens=6
    )
    assert (quiet["input_ids"] < n).all()


@pytest.mark.parametrize(
    "sections",
    [
        {"loss": {"sequence_kd": "mix"}, "teacher": {"cache": True}},
        {"loss": {"on_policy": 0.5}, "train": {"seed": 5}},
    ],
    ids=["sequence_kd+store", "on_policy"],
)
def test_a_padded_pair_distils_end_to_end_and_reproduces_its_report(pair, pairs_csv, tmp_path, sections):
    tmp, tok, n = pair
    out = tmp_path / "out"
    raw = causal_recipe(
        tmp / "teacher",
        pairs_csv,
        out,
        student={"init": "pretrained", "name_or_path": str(tmp / "student")},
        loss=sections["loss"],
        train={"steps": 4, "baseline": True, **sections.get("train", {})},
    )
    raw["teacher"].update(sections.get("teacher", {}))
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    report = read_report(out)
    history = json.loads((out / "results.json").read_text())["history"]
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history if "train/loss" in h)
    for name in ("student", "baseline"):
        generation = json.loads((out / name / "generation_config.json").read_text())
        assert generation["suppress_tokens"] == list(range(n, n + PAD_STUDENT))
    if "sequence_kd" in sections["loss"]:
        shards = sorted((out / "pseudo_targets").glob("*.safetensors"))
        assert shards and all((load_file(s)["tokens"] < n).all() for s in shards)  # no loud row generated
        stored = sorted((out / "teacher_outputs").glob("*.safetensors"))
        assert stored and all((load_file(s)["ids"] < n).all() for s in stored)  # top-k of real ids
    assert main(["evaluate", str(recipe), "--out", str(tmp_path / "again")]) == 0
    again = read_report(tmp_path / "again")
    for name in ("teacher", "student", "baseline"):
        assert again["by_name"][name]["metrics"] == report["by_name"][name]["metrics"], name


def test_a_real_vocabulary_difference_is_still_refused(pair, pairs_csv, tmp_path):
    tmp, tok, n = pair
    qwen(tmp_path / "small", tok, n - 2, 2, seed=1)
    raw = causal_recipe(
        tmp / "teacher",
        pairs_csv,
        tmp_path / "out",
        student={"init": "pretrained", "name_or_path": str(tmp_path / "small")},
    )
    with pytest.raises(DistillError, match=f"fewer than the {n} tokens of the tokenizer"):
        from distill.api import validate

        validate(raw)
