"""Tiny teachers, tokenizers and data sets built in memory, one per task, for `distill.run(...)`
from Python; also a script: ``python tests/api_objects.py TASK OUT [--resume]`` runs one, writing
nothing but what distill writes into OUT."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import (  # noqa: E402
    make_seq2seq_tokenizer,
    make_tokenizer,
    sentiment_rows,
    tiny_bert_config,
    tiny_marian_config,
    translation_rows,
)

TASKS = ("classification", "translation", "causal_lm")


def objects(task: str, seed: int = 0):
    """(teacher, tokenizer, DatasetDict) for ``task``, nothing read from or written to disk."""
    import transformers as tf
    from datasets import Dataset, DatasetDict

    torch.manual_seed(seed)
    if task == "classification":
        tok = make_tokenizer(None)
        teacher = tf.BertForSequenceClassification(tiny_bert_config(len(tok)))
        data = DatasetDict(train=Dataset.from_list(sentiment_rows(300, seed=seed)))
        return teacher, tok, data
    rows = Dataset.from_list(translation_rows(240, seed=seed))
    if task == "translation":
        tok = make_seq2seq_tokenizer(None)
        return tf.MarianMTModel(tiny_marian_config(len(tok))), tok, DatasetDict(train=rows)
    from test_causal_lm import make_causal_tokenizer

    tok = make_causal_tokenizer(None)
    config = tf.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        vocab_size=len(tok),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return tf.LlamaForCausalLM(config), tok, DatasetDict(train=rows)


def recipe(task: str, out: Path) -> dict:
    """The task's recipe as a dict: no teacher path and no data files (passed as objects)."""
    train = {"steps": 6, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2, "checkpoint_every": 1}
    if task == "classification":
        data = {"text_column": "text", "label_column": "sentiment", "validation_size": 30, "test_size": 30}
        return {
            "task": task,
            "teacher": {"finetune": {"enabled": True, "steps": 3, "batch_size": 8, "learning_rate": 1e-3}},
            "student": {"num_layers": 2},
            "data": {**data, "max_length": 16},
            "train": {**train, "baseline": True},
            "eval": {"latency": False},
            "output": {"dir": str(out)},
        }
    data = {"validation_size": 20, "test_size": 20, "max_length": 16, "max_target_length": 16}
    if task == "translation":
        data.update(source_column="en", target_column="fr")
        student = {"num_decoder_layers": 1}
    else:
        data.update(prompt_column="en", completion_column="fr")
        student = {"num_layers": 2}
    return {
        "task": task,
        "student": student,
        "data": data,
        "train": train,
        "eval": {"batch_size": 8, "max_new_tokens": 8, "latency": False},
        "output": {"dir": str(out)},
    }


if __name__ == "__main__":
    import distill

    name, folder = sys.argv[1], Path(sys.argv[2])
    teacher, tokenizer, data = objects(name)
    result = distill.run(
        recipe(name, folder), teacher=teacher, tokenizer=tokenizer, data=data, resume="--resume" in sys.argv
    )
    print("scores", result.scores)
