"""task: token_classification — tags on each word's first sub-word, entity-level F1, the same
stages, store, resume and two-process guarantees as the other tasks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEUTRAL, make_tokenizer, read_report, tiny_bert_config, write_recipe
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from transformers import AutoModelForTokenClassification, BertForTokenClassification, pipeline

from distill.config import DataConfig
from distill.errors import DistillError
from distill.tasks import token_classification as tc

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
PEOPLE = ["anna", "bob", "carl", "dora"]
SURNAMES = ["smith", "jones"]
PLACES = ["paris", "rome", "lima"]
# Vocabulary pieces: "cars" and "oslo" are not words of it, so they split into sub-words.
PIECES = ["new", "york", "##s", "os", "##lo"]


def tagged_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences of neutral words with people (one or two words) and places (one or two)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 6)):
            kind = rng.random()
            if kind < 0.2:
                person = [rng.choice(PEOPLE)] + ([rng.choice(SURNAMES)] if rng.random() < 0.5 else [])
                words += person
                tags += ["B-PER"] + ["I-PER"] * (len(person) - 1)
            elif kind < 0.35:
                place = rng.choice([[rng.choice(PLACES)], ["new", "york"], ["oslo"]])
                words += place
                tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
            else:
                words.append(rng.choice([*NEUTRAL, "cars"]))
                tags.append("O")
        rows.append({"tokens": words, "tags": tags})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_tagger(folder: Path, seed: int = 0, tags: list[str] = TAGS, **config_kw) -> Path:
    """A tiny BERT tagger of ``tags`` with its tokenizer, saved with save_pretrained."""
    tok = make_tokenizer(folder, extra=PEOPLE + SURNAMES + PLACES + PIECES)
    torch.manual_seed(seed)
    labels = {
        "num_labels": len(tags),
        "id2label": dict(enumerate(tags)),
        "label2id": {t: i for i, t in enumerate(tags)},
    }
    model = BertForTokenClassification(tiny_bert_config(len(tok), **{**labels, **config_kw}))
    model.save_pretrained(folder)
    return folder


def tagger_recipe(teacher_path: Path, data_path: Path, out: Path, **sections) -> dict:
    raw = {
        "task": "token_classification",
        "teacher": {"name_or_path": str(teacher_path)},
        "student": {"init": "copy_layers", "num_layers": 2},
        "data": {
            "files": {"train": str(data_path)},
            "text_column": "tokens",
            "label_column": "tags",
            "validation_size": 30,
            "test_size": 40,
            "max_length": 16,
        },
        "train": {"steps": 6, "batch_size": 8, "learning_rate": 3e-3, "log_every": 1},
        "eval": {"latency_examples": 8, "latency_repeats": 1},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def run_cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    from test_faults import env

    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args],
        env=env(tmp),
        capture_output=True,
        text=True,
        timeout=400,
    )


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "tags, entities",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
        (["I-PER", "I-PER", "B-PER"], {("PER", 0, 1), ("PER", 2, 2)}),  # I- after O starts one
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 2)}),  # a type change starts one
        (["O", "O"], set()),
        (["PER", "PER", "O", "LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),  # tags without B/I: IO chunks
    ],
)
def test_entities_are_conlleval_chunks(tags, entities):
    assert tc.chunks(tags) == entities


def test_entity_scores_of_known_predictions():
    ids = {t: i for i, t in enumerate(TAGS)}
    refs = [[ids[t] for t in ["B-PER", "I-PER", "O", "B-LOC"]] + [-100], [ids["B-LOC"], -100]]
    hyps = [[ids[t] for t in ["B-PER", "O", "O", "B-LOC"]] + [-100], [ids["O"], -100]]
    scores = tc.compute_metrics(hyps, refs, None, TAGS)
    # gold: PER 0-1, LOC 3, LOC 0 (3); predicted: PER 0, LOC 3 (2); right: LOC 3 (1)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert scores["accuracy"] == pytest.approx(3 / 5)  # words scored: 5, the -100 positions not
    assert tc.metric_inputs(hyps, refs, None, TAGS) == (
        [["B-PER", "O", "O", "B-LOC"], ["O"]],
        [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC"]],
    )


# ----------------------------------------------------------------------------- alignment


def _splits(rows: list[dict]) -> DatasetDict:
    return DatasetDict(train=Dataset.from_list(rows))


def test_a_words_tag_goes_on_its_first_subword_only(tmp_path):
    tok = make_tokenizer(None, extra=PIECES)
    cfg = DataConfig(text_column="tokens", label_column="tags", max_length=16)
    raw = _splits([{"tokens": ["cars", "oslo", "today"], "tags": ["O", "B-LOC", "O"]}])
    prepared, names = tc.prepare_targets(raw, cfg, None, head_trained=False)
    assert names == ["B-LOC", "O"]  # sorted tag names
    row = tc.tokenize(prepared, tok, cfg)["train"][0]
    pieces = tok.convert_ids_to_tokens(row["input_ids"])
    assert pieces == ["[CLS]", "car", "##s", "os", "##lo", "today", "[SEP]"]
    assert row["labels"] == [-100, 1, -100, 0, -100, 1, -100]


def test_byte_level_tokens_carrying_the_space_align_with_their_word():
    """GPT-2-style byte-level BPE: a word's first token holds the space before it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        ["anna went to paris", "bob likes rome"] * 20,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    words = ["anna", "walked", "to", "paris"]  # "walked" is not a learnt word: several tokens
    text, owner = tc.word_spans(words)
    enc = tok(text, return_offsets_mapping=True)
    starts = tc.first_subwords(enc["offset_mapping"], owner)
    assert sorted(w for w in starts if w >= 0) == [0, 1, 2, 3]  # each word once
    first = {w: i for i, w in enumerate(starts) if w >= 0}
    assert tok.convert_ids_to_tokens(enc["input_ids"][first[3]]).lstrip("Ġ").startswith("p")
    assert len(enc["input_ids"]) > 4  # "walked" split: its later pieces carry no label


def test_sentencepiece_tokens_with_their_word_marker_align_with_their_word():
    """XLM-R / T5-style SentencePiece (a Unigram model, ▁ for the space before a word): a word's
    first piece may be the marker alone or the marker with letters; either way it is the word's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.train_from_iterator(
        ["anna went to paris", "bob likes rome", "a walk in the park"] * 20,
        trainers.UnigramTrainer(vocab_size=40, special_tokens=["<pad>", "<unk>"], unk_token="<unk>"),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=unigram, pad_token="<pad>", unk_token="<unk>")
    words = ["anna", "walked", "to", "zürich"]  # "walked" and "zürich" are not learnt: several pieces
    text, owner = tc.word_spans(words)
    enc = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "▁" in pieces or any(p.startswith("▁") for p in pieces)  # the marker is in play
    starts = tc.first_subwords(enc["offset_mapping"], owner)
    assert sorted(w for w in starts if w >= 0) == [0, 1, 2, 3]  # each word once
    first = {w: i for i, w in enumerate(starts) if w >= 0}
    for w, word in enumerate(words):  # the labelled piece, and the pieces up to the next word's, spell it
        end = first.get(w + 1, len(pieces))
        spelled = "".join(pieces[first[w] : end]).replace("▁", "").replace("<unk>", "?")
        assert spelled.replace("?", "") and all(c in word for c in spelled.replace("?", "")), (word, pieces)
    assert len(pieces) > 4  # split words: their later pieces carry no label


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"tokens": ["a", "b"], "tags": ["O"]}, {"tokens": ["c"], "tags": ["B-PER"]}],
            "an example in split 'train' has 2 words and 1 tags ('a b')",
        ),
        ([{"tokens": ["a", "b"], "tags": ["O", "O"]}], "has 1 tag(s) ['O']: a tagger needs 2 or more"),
        ([{"tokens": ["a"], "tags": 1.5}], "must hold one tag per word"),
    ],
)
def test_bad_tags_are_refused_in_one_line(rows, message):
    cfg = DataConfig(text_column="tokens", label_column="tags")
    with pytest.raises(
        DistillError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        tc.prepare_targets(_splits(rows), cfg, None, head_trained=False)


def test_tags_as_space_separated_strings_and_as_class_ids():
    cfg = DataConfig(text_column="text", label_column="tags")
    csv_like = _splits(
        [{"text": "anna went home", "tags": "B-PER O O"}, {"text": "to rome", "tags": "O B-LOC"}]
    )
    prepared, names = tc.prepare_targets(csv_like, cfg, None, head_trained=False)
    assert names == ["B-LOC", "B-PER", "O"] and prepared["train"]["labels"] == [[1, 2, 2], [2, 0]]
    features = Features({"tokens": List(Value("string")), "tags": List(ClassLabel(names=["O", "B-PER"]))})
    ids = DatasetDict(
        train=Dataset.from_dict({"tokens": [["anna", "x"]], "tags": [[1, 0]]}, features=features)
    )
    prepared, names = tc.prepare_targets(
        ids, DataConfig(text_column="tokens", label_column="tags"), None, False
    )
    assert names == ["O", "B-PER"] and prepared["train"]["labels"] == [[1, 0]]


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tagger")
    teacher = save_tagger(tmp / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    data = write_jsonl(tmp / "ner.jsonl", tagged_rows(300))
    return tmp, teacher, data


def _history(out: Path) -> list[dict]:
    """The training steps' logged losses (the evaluations aside)."""
    return [h for h in json.loads((out / "results.json").read_text())["history"] if "train/loss" in h]


def test_a_tagger_distils_and_the_saved_student_reproduces_its_report_through_pipeline(tagger, tmp_path):
    tmp, teacher, data = tagger
    # The teacher's stage first: a tagger fine-tuned here, then distilled into 2 layers.
    raw = tagger_recipe(
        teacher,
        data,
        tmp_path / "out",
        teacher={"finetune": {"enabled": True, "steps": 30, "batch_size": 16, "learning_rate": 3e-3}},
        train={"steps": 20, "baseline": True},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert run_cli("validate", str(recipe), tmp=tmp_path).returncode == 0
    done = run_cli("run", str(recipe), tmp=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    report = read_report(out)
    assert report["primary_metric"] == "f1"
    student = report["by_name"]["student"]["metrics"]
    assert set(student) >= {"f1", "precision", "recall", "accuracy"}
    assert (
        report["by_name"]["teacher"]["metrics"]["f1"] > 0.5
    )  # the fine-tuned teacher has learnt the entities
    assert any(h.get("train/soft", 0) > 0 for h in _history(out))
    saved = AutoModelForTokenClassification.from_pretrained(out / "student")
    assert saved.config.num_hidden_layers == 2
    assert list(saved.config.id2label.values()) == sorted(TAGS)  # a new head: the data's tags, sorted
    assert "token-classification" in (out / "student" / "README.md").read_text()

    again = pipeline_scores(recipe, out)
    assert again["scored"] == 1.0  # every word of the test split has a first sub-word
    assert again["f1"] == pytest.approx(student["f1"], abs=1e-9)
    assert again["accuracy"] == pytest.approx(student["accuracy"], abs=1e-9)


def pipeline_scores(recipe: Path, out: Path) -> dict[str, float]:
    """The saved student's scores through plain transformers' pipeline: the run's test split, its
    words joined by spaces, each word's tag read off the first token that starts in it; and the
    share of words scored."""
    tag = pipeline("token-classification", model=str(out / "student"), ignore_labels=[], device="cpu")
    config = tag.model.config
    ids = {config.id2label[i]: i for i in range(config.num_labels)}
    hyps, refs = [], []
    for words, tags in _test_split(recipe, out):
        text, owner = tc.word_spans(words)
        found: dict[int, int] = {}
        for token in tag(text):
            inside = owner[token["start"] : token["end"]]
            inside = inside[inside >= 0]
            if len(inside) and int(inside[0]) not in found:
                found[int(inside[0])] = ids[token["entity"]]
        # A word no token starts in (cut off, or given no token) is not scored, as in the run.
        hyps.append([found[w] for w in range(len(words)) if w in found])
        refs.append([ids[t] for w, t in enumerate(tags) if w in found])
    scores = tc.compute_metrics(hyps, refs, None, list(ids))
    scores["scored"] = sum(map(len, refs)) / sum(len(words) for words, _ in _test_split(recipe, out))
    return scores


def _test_split(recipe: Path, out: Path) -> list[tuple[list[str], list[str]]]:
    """The run's test split, carved as the run carved it."""
    from distill import data as data_module
    from distill.config import load_recipe

    cfg = load_recipe(recipe, [f"output.dir={out}"])
    raw = data_module.load_raw(cfg.data, tc.columns(cfg.data))
    return [(list(r["tokens"]), list(r["tags"])) for r in raw["test"]]


def test_a_tagger_through_the_teacher_store_trains_as_online(tagger, tmp_path):
    """The store keeps every tag's log-probability (fewer tags than teacher.cache_top_k): the
    student's losses are the online run's."""
    tmp, teacher, data = tagger
    outs = {}
    for cache in (False, True):
        raw = tagger_recipe(
            teacher,
            data,
            tmp_path / f"c{cache}",
            teacher={"cache": cache},
            # a student of its own weights: the soft loss is far from 0
            student={"init": "from_config", "config_overrides": {"num_hidden_layers": 2}},
            eval={"latency": False},
        )
        recipe = write_recipe(tmp_path / f"r{cache}.yaml", raw)
        done = run_cli("run", str(recipe), tmp=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[cache] = tmp_path / f"c{cache}"
    assert "the teacher's mean probability outside its top 32: 0.00e+00" in done.stdout
    online, stored = (_history(outs[c]) for c in (False, True))
    assert len(online) == 6 and min(h["train/soft"] for h in online) > 1e-3
    assert [h["train/soft"] for h in stored] == pytest.approx([h["train/soft"] for h in online], rel=1e-3)
    assert read_report(outs[True])["by_name"]["student"]["metrics"]["f1"] == pytest.approx(
        read_report(outs[False])["by_name"]["student"]["metrics"]["f1"], abs=0.03
    )


def test_a_tagger_killed_mid_stage_resumes_bit_for_bit(tagger, tmp_path):
    from test_faults import killed_mid_stage_and_resumed, same_as_reference

    tmp, teacher, data = tagger
    dropout = save_tagger(tmp_path / "teacher")  # dropout on: the RNG must be restored too
    raw = tagger_recipe(
        dropout,
        data,
        tmp_path / "unused",
        train={"steps": 8, "checkpoint_every": 1, "baseline": True},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    reference, out = killed_mid_stage_and_resumed(recipe, tmp_path, "stages/distill/checkpoints/step_3")
    assert same_as_reference(out, reference) == []


def test_two_processes_tag_as_one(tagger, tmp_path):
    from test_distributed import one_and_two_processes

    tmp, teacher, data = tagger
    raw = tagger_recipe(
        teacher,
        data,
        tmp_path / "unused",
        data={"validation_size": 31, "test_size": 41},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two, _ = one_and_two_processes(recipe, tmp_path)
    assert [h["train/loss"] for h in _history(one)] == pytest.approx(
        [h["train/loss"] for h in _history(two)], rel=1e-4
    )
    ra, rb = read_report(one), read_report(two)
    assert ra["examples"] == rb["examples"] == 41
    for model in ("teacher", "student"):
        assert ra["by_name"][model]["metrics"] == pytest.approx(rb["by_name"][model]["metrics"]), model


@pytest.mark.parametrize("init", ["copy_layers", "from_config"])
@pytest.mark.parametrize("family", ["roberta", "gpt2", "qwen2"])
def test_tagger_family_matrix(family, init, tagger, tmp_path):
    """Encoders and decoder-only taggers (whose tokenizers have no pad token): validate, a short
    run, and the saved student through pipeline reproducing the report's F1 and accuracy."""
    from test_families import encoder_config

    from distill.cli import main

    _, _, data = tagger
    folder = tmp_path / "teacher"
    labels = {
        "num_labels": len(TAGS),
        "id2label": dict(enumerate(TAGS)),
        "label2id": {t: i for i, t in enumerate(TAGS)},
    }
    if family == "roberta":
        tok = make_tokenizer(folder, extra=PEOPLE + SURNAMES + PLACES + PIECES)
        config = encoder_config(family, len(tok))
    else:  # byte-level BPE with an end token and no pad token, as GPT-2's and Qwen2's
        from test_families import byte_level_tokenizer

        sentences = [" ".join(r["tokens"]) for r in tagged_rows(300)]
        tok = byte_level_tokenizer(folder, sentences, eos="<|endoftext|>")
        if family == "qwen2":
            config = encoder_config(family, len(tok))
            config.pad_token_id = None
        else:
            from transformers import GPT2Config

            config = GPT2Config(
                vocab_size=len(tok), n_embd=32, n_layer=4, n_head=2, n_positions=64, eos_token_id=1
            )
        config.eos_token_id = config.bos_token_id = tok.eos_token_id
    for key, value in labels.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForTokenClassification.from_config(config).save_pretrained(folder)
    student = (
        {"init": init, "num_layers": 2}
        if init == "copy_layers"
        else {"init": init, "config_overrides": {"num_hidden_layers": 2}}
    )
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tagger_recipe(folder, data, out, student=student, train={"steps": 3}, eval={"latency": False}),
    )
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    scores = read_report(out)["by_name"]["student"]["metrics"]
    assert AutoModelForTokenClassification.from_pretrained(out / "student").config.num_hidden_layers == 2
    again = pipeline_scores(recipe, out)
    assert again["scored"] == 1.0
    assert again["f1"] == pytest.approx(scores["f1"], abs=1e-9)
    assert again["accuracy"] == pytest.approx(scores["accuracy"], abs=1e-9)
