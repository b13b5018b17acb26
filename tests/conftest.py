"""Shared fixtures: tiny models built from configs and small data sets, saved like a user's files."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

POSITIVE = ["good", "great", "love", "happy", "excellent", "nice", "fun", "best"]
NEGATIVE = ["bad", "awful", "hate", "sad", "terrible", "worst", "boring", "poor"]
NEUTRAL = ["the", "a", "car", "road", "today", "city", "phone", "game", "team", "news", "is", "was"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS = ["negative", "neutral", "positive"]


def make_tokenizer(folder: Path, extra: list[str] = ()) -> BertTokenizer:
    """A word-level WordPiece tokenizer over the test vocabulary, saved into ``folder``."""
    words = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL + list(extra)
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=64)
    if folder is not None:  # None: in memory only
        tok.save_pretrained(folder)
    return tok


def tiny_bert_config(vocab_size: int, **kw) -> BertConfig:
    defaults = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    defaults.update(kw)
    return BertConfig(**defaults)


def save_tiny_bert(folder: Path, seed: int = 0, **config_kw) -> Path:
    """A tiny BERT classifier with its tokenizer, saved with save_pretrained (like a user's local model)."""
    tok = make_tokenizer(folder)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(len(tok), **config_kw))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short texts whose label follows from their words (plus 10% label noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(LABELS)
        words = rng.sample(NEUTRAL, 3)
        if label == "positive":
            words += rng.sample(POSITIVE, 2)
        elif label == "negative":
            words += rng.sample(NEGATIVE, 2)
        rng.shuffle(words)
        if rng.random() < 0.1:
            label = rng.choice(LABELS)
        rows.append({"text": " ".join(words), "sentiment": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def data_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "tweets.csv", sentiment_rows(400))


def recipe_dict(teacher_path: Path, data_path: Path, out: Path, **sections) -> dict:
    raw = {
        "description": "tiny test recipe",
        "task": "classification",
        "teacher": {"name_or_path": str(teacher_path)},
        "student": {"init": "copy_layers", "num_layers": 2},
        "data": {
            "files": {"train": str(data_path)},
            "text_column": "text",
            "label_column": "sentiment",
            "validation_size": 40,
            "test_size": 40,
            "max_length": 16,
        },
        "train": {"steps": 6, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2},
        "eval": {"latency_examples": 8, "latency_repeats": 1},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def read_report(out: Path) -> dict:
    """``OUT/report.json`` with each model's row also reachable by name: ``report["by_name"]["student"]``."""
    report = json.loads((out / "report.json").read_text())
    report["by_name"] = {m["name"]: m for m in report["models"]}
    return report


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own Accelerator, as each process of a real run does."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --- translation -----------------------------------------------------------------------------

EN_FR = {
    "one": "un",
    "two": "deux",
    "three": "trois",
    "four": "quatre",
    "five": "cinq",
    "six": "six",
    "seven": "sept",
    "eight": "huit",
    "nine": "neuf",
    "red": "rouge",
    "green": "vert",
    "blue": "bleu",
    "cat": "chat",
    "dog": "chien",
    "car": "voiture",
    "house": "maison",
    "big": "grand",
    "small": "petit",
}
SEQ_SPECIAL = ["<pad>", "</s>", "<unk>"]


def make_seq2seq_tokenizer(folder: Path, extra: list[str] = ()):
    """A word-level tokenizer shared by source and target, appending </s>, saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = SEQ_SPECIAL + sorted(set(EN_FR) | set(EN_FR.values())) + list(extra)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    from tokenizers import decoders

    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.model_max_length = 64
    if folder is not None:  # None: in memory only
        tok.save_pretrained(folder)
    return tok


def tiny_marian_config(vocab_size: int, **config_kw):
    from transformers import MarianConfig

    defaults = dict(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=4,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
        share_encoder_decoder_embeddings=True,
    )
    defaults.update(config_kw)
    return MarianConfig(**defaults)


def save_tiny_marian(folder: Path, seed: int = 0, **config_kw) -> Path:
    from transformers import MarianMTModel

    tok = make_seq2seq_tokenizer(folder)
    torch.manual_seed(seed)
    MarianMTModel(tiny_marian_config(len(tok), **config_kw)).save_pretrained(folder)
    return folder


def marian_pair():
    """A tiny Marian teacher (frozen) and a student of 2 of its 4 decoder layers, perturbed so that they disagree."""
    from transformers import MarianMTModel

    from distill.modeling import copy_encoder_decoder_layers, freeze

    torch.manual_seed(0)
    teacher = MarianMTModel(tiny_marian_config(39, dropout=0.0))
    student = copy_encoder_decoder_layers(teacher, [0, 1], [0, 3])
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return freeze(teacher), student


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    return save_tiny_marian(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("pairs") / "pairs.csv", translation_rows(300))


@pytest.fixture(scope="module")
def translation_tokenized(tmp_path_factory):
    """A word-level tokenizer and 24 tokenized EN->FR pairs (input_ids, attention_mask, labels)."""
    from datasets import Dataset, DatasetDict

    from distill.config import DataConfig
    from distill.tasks import translation

    tok = make_seq2seq_tokenizer(tmp_path_factory.mktemp("tok"))
    rows = translation_rows(24, seed=5)
    splits = DatasetDict(train=Dataset.from_list([{"source": r["en"], "target": r["fr"]} for r in rows]))
    data = DataConfig(files={"train": "unused"}, source_column="en", target_column="fr", max_length=16)
    return tok, translation.tokenize(splits, tok, data)["train"]


def translation_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """English phrases and their word-by-word French: a small, learnable translation task."""
    rng = random.Random(seed)
    words = list(EN_FR)
    rows = []
    for _ in range(n):
        src = [rng.choice(words) for _ in range(rng.randint(2, 6))]
        rows.append({"en": " ".join(src), "fr": " ".join(EN_FR[w] for w in src)})
    return rows


def translation_recipe(teacher_path: Path, data_path: Path, out: Path, **sections) -> dict:
    raw = {
        "description": "tiny translation recipe",
        "task": "translation",
        "teacher": {"name_or_path": str(teacher_path)},
        "student": {"init": "copy_layers", "num_decoder_layers": 1},
        "data": {
            "files": {"train": str(data_path)},
            "source_column": "en",
            "target_column": "fr",
            "validation_size": 20,
            "test_size": 20,
            "max_length": 16,
            "max_target_length": 16,
        },
        "train": {"steps": 4, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2},
        "eval": {
            "batch_size": 8,
            "num_beams": 2,
            "max_new_tokens": 10,
            "latency_examples": 4,
            "latency_repeats": 1,
        },
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def save_seq2seq(folder: Path, family: str, **config_kw) -> Path:
    """A tiny teacher of ``family`` (marian, bart, mbart, fsmt, t5) with the shared word-level
    tokenizer (pad 0, </s> 1), 2+2 layers. MBart's and FSMT's decoder inputs are their targets with
    the last token (</s>) moved to the front, so their generation starts with </s>."""
    import transformers as tf

    tok = make_seq2seq_tokenizer(folder)
    torch.manual_seed(0)
    start = 1 if family in ("mbart", "fsmt") else 0
    ids = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=start, forced_eos_token_id=1)
    ids.update(config_kw)
    bart_like = dict(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        **ids,
    )
    if family == "marian":
        model = tf.MarianMTModel(tiny_marian_config(len(tok), **config_kw))
    elif family == "bart":
        model = tf.BartForConditionalGeneration(tf.BartConfig(bos_token_id=0, **bart_like))
    elif family == "mbart":
        model = tf.MBartForConditionalGeneration(tf.MBartConfig(bos_token_id=0, **bart_like))
    elif (
        family == "fsmt"
    ):  # two vocabularies (the same one here), its output layer not get_output_embeddings()
        del bart_like["vocab_size"]
        model = tf.FSMTForConditionalGeneration(
            tf.FSMTConfig(
                langs=["en", "fr"],
                src_vocab_size=len(tok),
                tgt_vocab_size=len(tok),
                bos_token_id=0,
                **{"use_cache": False, **bart_like},  # with the cache on, its forward has no causal mask
            )
        )
    elif family == "t5":
        model = tf.T5ForConditionalGeneration(
            tf.T5Config(
                vocab_size=len(tok),
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=2,
                **ids,
            )
        )
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    return folder
