"""A catalogue of bad inputs: each is refused by `distill validate` and by `distill run` alike, with
one line, exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import (
    make_tokenizer,
    recipe_dict,
    save_tiny_bert,
    sentiment_rows,
    tiny_bert_config,
    write_csv,
    write_recipe,
)
from transformers import BertForSequenceClassification, BertModel, BertTokenizer

from distill.cli import main


def _copy_teacher(teacher_dir: Path, folder: Path) -> Path:
    shutil.copytree(teacher_dir, folder)
    return folder


def catalogue(tmp: Path, teacher_dir: Path, data_csv: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (overrides, a fragment of the one-line message)."""
    files = tmp / "files"
    files.mkdir()
    bad_label = write_csv(files / "bad_label.csv", [{"text": "x", "sentiment": "sarcastic"}])
    empty = files / "empty.csv"
    empty.write_text("text,sentiment\n")
    numeric = write_csv(
        files / "numeric.csv",
        [{"text": r["text"], "sentiment": r["sentiment"], "n": i} for i, r in enumerate(sentiment_rows(200))],
    )
    latin1 = files / "latin1.csv"
    latin1.write_bytes(
        ("text,sentiment\n" + "\n".join(f"caf\xe9 good {i},positive" for i in range(100))).encode("latin-1")
    )
    unterminated = files / "unterminated.csv"
    unterminated.write_text('text,sentiment\nhello,positive\n"never closed,negative\nfoo,neutral\n')
    extra_field = files / "extra_field.csv"
    extra_field.write_text("text,sentiment\ngood,positive\nbad,negative,surplus\n")
    as_json = files / "rows.json"
    as_json.write_text(json.dumps([{"text": "good", "sentiment": "positive"}]))
    as_txt = files / "rows.txt"
    as_txt.write_text("good\n")

    truncated = _copy_teacher(teacher_dir, tmp / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    emptied = _copy_teacher(teacher_dir, tmp / "emptied")
    (emptied / "model.safetensors").write_bytes(b"")
    bad_config = _copy_teacher(teacher_dir, tmp / "bad_config")
    (bad_config / "config.json").write_text("{not json")

    other_tok = tmp / "other_tokenizer"
    tok = make_tokenizer(other_tok, extra=["zebra"])
    BertForSequenceClassification(tiny_bert_config(len(tok))).save_pretrained(other_tok)
    small_vocab = tmp / "small_vocab"
    make_tokenizer(small_vocab)
    BertForSequenceClassification(tiny_bert_config(20)).save_pretrained(small_vocab)  # 20 < 33 tokens
    two_labels = tmp / "two_labels"
    make_tokenizer(two_labels)
    BertForSequenceClassification(
        tiny_bert_config(33, num_labels=2, id2label=None, label2id=None)
    ).save_pretrained(two_labels)
    small_teacher = tmp / "small_teacher"
    make_tokenizer(small_teacher)
    BertForSequenceClassification(tiny_bert_config(20)).save_pretrained(small_teacher)  # 20 < 33 tokens
    backbone = tmp / "backbone"
    make_tokenizer(backbone)
    BertModel(tiny_bert_config(33)).save_pretrained(backbone)
    no_pad = tmp / "no_pad"
    shutil.copytree(teacher_dir, no_pad)
    tok = BertTokenizer.from_pretrained(no_pad)
    tok.pad_token = None
    tok.save_pretrained(no_pad)
    from test_token_classification import tagged_rows, write_jsonl

    rows = tagged_rows(200)
    tags = write_jsonl(files / "tags.jsonl", rows)
    miscounted = write_jsonl(
        files / "miscounted.jsonl", [{**rows[0], "tags": rows[0]["tags"][:-1]}, *rows[1:]]
    )
    one_tag = write_jsonl(files / "one_tag.jsonl", [{**r, "tags": ["O"] * len(r["tags"])} for r in rows])
    tagging = ["task=token_classification", "data.text_column=tokens", "data.label_column=tags"]
    from test_multi_label import labelled_rows

    multi = ["task=multi_label_classification", "data.label_column=tags"]
    topics = write_jsonl(files / "topics.jsonl", labelled_rows(200))
    as_lists = write_jsonl(
        files / "as_lists.jsonl", [{**r, "sentiment": [r["sentiment"]]} for r in sentiment_rows(200)]
    )
    single_head = tmp / "single_head"
    shutil.copytree(teacher_dir, single_head)
    head_config = json.loads((single_head / "config.json").read_text())
    head_config["problem_type"] = "single_label_classification"
    (single_head / "config.json").write_text(json.dumps(head_config))
    one_label = write_csv(
        files / "one_label.csv", [{**r, "sentiment": "positive"} for r in sentiment_rows(200)]
    )
    stars = write_csv(
        files / "stars.csv", [{**r, "sentiment": 1 + i % 3} for i, r in enumerate(sentiment_rows(200))]
    )
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    metric = "eval.metrics=[" + str(tmp / "no_such_metric") + "]"

    return {
        # the recipe itself
        "unknown key": (["loss.temprature=2"], "did you mean 'loss.temperature'"),
        "infinite temperature": (["loss.temperature=.inf"], "loss.temperature: expected a finite number"),
        "zero temperature": (["loss.temperature=0"], "loss.temperature: must be in"),
        "alpha above 1": (["loss.alpha=1.5"], "loss.alpha: must be in [0, 1]"),
        "alpha not a number": (["loss.alpha=.nan"], "loss.alpha: expected a finite number"),
        "no steps": (["train.steps=0"], "train.steps: must be > 0"),
        "steps not a number": (["train.steps=abc"], "train.steps: expected an integer"),
        "negative batch": (["train.batch_size=-1"], "train.batch_size: must be > 0"),
        "negative seed": (["train.seed=-1"], "train.seed: a seed is a whole number"),
        "unknown precision": (["train.mixed_precision=fp8"], "train.mixed_precision: must be one of"),
        "fp16 on a CPU": (["train.mixed_precision=fp16"], "fp16 needs a GPU"),
        "unknown scheduler": (["train.lr_scheduler=cosines"], "did you mean 'cosine'"),
        "unknown soft loss": (["loss.soft=kll"], "did you mean 'kl'"),
        "unknown student init": (["student.init=magic"], "student.init: must be one of"),
        "no student layers": (["student.layers=[]"], "student.layers: must name at least one"),
        "a layer twice": (["student.layers=[0,0]"], "names a layer twice"),
        "unknown task": (["task=segmentation"], "task: must be one of"),
        "no latency batch sizes": (["eval.latency_batch_sizes=[]"], "give at least one batch size"),
        "too many threads": (["eval.latency_threads=5000"], "eval.latency_threads: must be in"),
        "fractional validation size": (
            ["data.validation_size=1.5"],
            "data.validation_size: must be a fraction",
        ),
        "no output folder": (["output.dir="], "output.dir: required"),
        "override without a value": (["train.steps"], "expected key=value"),
        # layers and lengths against the teacher
        "a layer the teacher lacks": (["student.layers=[0,4]"], "student.layers: layer 4 does not exist"),
        "deeper than the teacher": (["student.num_layers=9"], "more than the teacher's 4 layers"),
        "hidden loss on a missing layer": (
            ["loss.hidden=mse", "loss.hidden_weight=1", "loss.layer_map={0: 7}"],
            "loss.layer_map: teacher layer 7 does not exist",
        ),
        "longer than the teacher's positions": (
            ["data.max_length=100"],
            "fails on inputs of data.max_length=100 tokens (it has 64 positions)",
        ),
        # the data
        "missing data file": (["data.files.train=/no/such.csv"], "data.files.train: file not found"),
        "unknown column": (["data.text_column=tweet"], "data.text_column: no column 'tweet'"),
        "numeric text column": (
            [f"data.files.train={numeric}", "data.text_column=n"],
            "data.text_column: column 'n' of split 'train' holds int64 values, not text",
        ),
        "label outside the label set": (
            [f"data.files={{train: {data_csv}, test: {bad_label}}}"],
            "label 'sarcastic' in split 'test'",
        ),
        "empty split": ([f"data.files={{train: {data_csv}, test: {empty}}}"], "the test split is empty"),
        "latin-1 file read as utf-8": (
            [f"data.files.train={latin1}"],
            "the csv data is not utf-8 text ('utf-8' codec can't decode byte 0xe9",
        ),
        "unterminated quote": ([f"data.files.train={unterminated}"], "EOF inside string starting at row"),
        "a row with an extra field": (
            [f"data.files.train={extra_field}"],
            "Expected 2 fields in line 3, saw 3",
        ),
        "mixed file formats": (
            [f"data.files={{train: {data_csv}, test: {as_json}}}"],
            "data.files: all files must have one format",
        ),
        "unsupported file type": ([f"data.files.train={as_txt}"], "unsupported file type '.txt'"),
        "repeated label names": (["data.label_names=[a,a]"], "data.label_names: names must be distinct"),
        "split smaller than a batch": (["train.batch_size=1000"], "fewer than one global batch (1000 x 1"),
        "teacher stage batch larger than the split": (
            ["teacher.finetune.enabled=true", "teacher.finetune.batch_size=1000"],
            "teacher.finetune.batch_size: the training split has 320 examples",
        ),
        # the models
        "teacher folder missing": (
            ["teacher.name_or_path=/no/such/teacher"],
            "cannot load teacher '/no/such/teacher'",
        ),
        "truncated teacher weights": (
            [f"teacher.name_or_path={truncated}"],
            "a weights file is damaged (Error while deserializing header",
        ),
        "empty teacher weights": ([f"teacher.name_or_path={emptied}"], "a weights file is damaged"),
        "corrupt teacher config": ([f"teacher.name_or_path={bad_config}"], "cannot load teacher"),
        "teacher with fewer embeddings than tokens": (
            [f"teacher.name_or_path={small_teacher}"],
            "the teacher has 20 token embeddings, fewer than the 33 tokens",
        ),
        "teacher without a task head": ([f"teacher.name_or_path={backbone}"], "has no trained task head"),
        "tokenizer without a pad or end token": (
            [f"teacher.name_or_path={no_pad}"],
            "has neither a pad token nor an end token",
        ),
        "student with another tokenizer": (
            ["student.init=pretrained", f"student.name_or_path={other_tok}"],
            "the student's tokenizer differs from the teacher's",
        ),
        "student with fewer token embeddings": (
            ["student.init=pretrained", f"student.name_or_path={small_vocab}"],
            "the student has 20 token embeddings, fewer than the 33 tokens",
        ),
        "student with another label count": (
            ["student.init=pretrained", f"student.name_or_path={two_labels}"],
            "cannot load student",
        ),
        "metric that cannot be loaded": ([metric], "no_such_metric"),
        "one label in the data": (
            [f"data.files.train={one_label}", "teacher.finetune.enabled=true"],
            "a classifier needs 2 or more",
        ),
        "integer labels beyond the teacher's ids": (
            [f"data.files.train={stars}"],
            "run 1-3, but the teacher's head has 3 labels (ids 0-2)",
        ),
        # regression
        "text labels for regression": (
            ["task=regression", "loss.soft=mse", "teacher.finetune.enabled=true"],
            "must hold numbers for regression",
        ),
        "a distribution loss for regression": (["task=regression"], "set loss.soft=mse"),
        "a classifier's head for regression": (
            ["task=regression", "loss.soft=mse", f"data.files.train={numeric}", "data.label_column=n"],
            "the teacher's head has 3 outputs; regression needs one",
        ),
        "squared-error soft loss for a tagger": (
            [*tagging, f"data.files.train={tags}", "loss.soft=mse"],
            "loss.soft: mse matches one output vector per example",
        ),
        # multi-label classification
        "a divergence multi-label does not take": (
            [*multi, f"data.files.train={topics}", "loss.soft=jsd"],
            "multi_label_classification takes kl, reverse_kl, mse",
        ),
        "numbers as multi-label targets": (
            [*multi, f"data.files.train={numeric}", "data.label_column=n"],
            "must hold each example's labels (a list of label names or ids",
        ),
        "multi-label names the teacher's head lacks": (
            [*multi, f"data.files.train={topics}"],
            "the teacher's labels ['negative', 'neutral', 'positive'] differ from the data's",
        ),
        "a single-label head for multi-label": (
            [
                "task=multi_label_classification",
                f"data.files.train={as_lists}",
                f"teacher.name_or_path={single_head}",
            ],
            "the teacher's head was trained for single_label_classification",
        ),
        # token classification
        "a sentence classifier as a tagger": (
            [*tagging, f"data.files.train={tags}"],
            "is a BertForSequenceClassification, not the BertForTokenClassification this task needs",
        ),
        "words and tags of different counts": (
            [*tagging, f"data.files.train={miscounted}", "teacher.finetune.enabled=true"],
            "has " + str(len(rows[0]["tokens"])) + " words and " + str(len(rows[0]["tags"]) - 1) + " tags",
        ),
        "a tagger with one tag": (
            [*tagging, f"data.files.train={one_tag}", "teacher.finetune.enabled=true"],
            "a tagger needs 2 or more",
        ),
        "tags for a sentence classifier": (
            [f"data.files.train={tags}", "data.text_column=tokens", "data.label_column=tags"],
            "must hold label names or integer ids",
        ),
        # the output folder
        "output folder is a file": ([f"output.dir={a_file}"], "is a file, not a folder"),
        "output folder inside a file": ([f"output.dir={a_file / 'out'}"], "is a file, so"),
        "output folder where nothing may be written": (
            ["output.dir=/sys/distill-out"],
            "output.dir: cannot write into /sys",
        ),
        "output folder name too long": ([f"output.dir={tmp / ('x' * 300)}"], "is too long for a folder"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory, teacher_dir, data_csv):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, catalogue(tmp, teacher_dir, data_csv)


def test_the_catalogue_is_large(cases):
    assert len(cases[1]) >= 40


@pytest.mark.parametrize("command", ["validate", "run"])
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(command, cases, teacher_dir, data_csv, capsys):
    tmp, catalogue_ = cases
    out = tmp / f"out-{command}"
    recipe = write_recipe(tmp / f"{command}.yaml", recipe_dict(teacher_dir, data_csv, out))
    before = sorted(p.name for p in tmp.iterdir())
    failures = []
    for case, (overrides, message) in catalogue_.items():
        code = main([command, str(recipe), *overrides])
        AcceleratorState._reset_state(reset_partial_state=True)  # each run is a new process in real use
        err = capsys.readouterr().err.strip()
        ok = (
            code == 2
            and err.startswith("distill: error: ")
            and message in err
            and "\n" not in err
            and "Traceback" not in err
            and not out.exists()
            and not Path("/sys/distill-out").exists()
        )
        if not ok:
            failures.append(f"{case}: exit {code}, {err[:300]!r}")
    assert not failures, "\n".join(failures)
    assert sorted(p.name for p in tmp.iterdir()) == before  # nothing written beside the inputs either


def test_a_bad_input_in_a_new_process_ends_with_one_line(tmp_path, teacher_dir, data_csv):
    """What a user's terminal shows: the error is the last line, with no traceback before it."""
    from test_cli import run_cli_process

    out = tmp_path / "out"
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(("text,sentiment\n" + "caf\xe9 good,positive\n" * 50).encode("latin-1"))
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    proc = run_cli_process("run", recipe, f"data.files.train={latin1}", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("distill: error: data.files: the csv data is not utf-8 text"), proc.stderr
    assert "Traceback" not in proc.stderr and "Failed to read file" not in proc.stderr
    assert not out.exists()


def test_a_teacher_with_trained_head_but_small_positions_is_fine_within_them(tmp_path, data_csv, capsys):
    """The length check refuses only what fails: max_length at the teacher's limit passes."""
    teacher = save_tiny_bert(tmp_path / "t", max_position_embeddings=20)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher, data_csv, tmp_path / "out"))
    assert main(["validate", str(recipe), "data.max_length=20"]) == 0
    assert main(["validate", str(recipe), "data.max_length=21"]) == 2
    assert "data.max_length=21 tokens (it has 20 positions)" in capsys.readouterr().err
    torch.manual_seed(0)


def test_translation_lengths_are_checked_against_the_model(tmp_path, pairs_csv, capsys):
    """Sources are cut at the tokenizer's model_max_length anyway; targets are not, so a
    max_target_length beyond the decoder's positions is refused up front."""
    from conftest import save_tiny_marian, translation_recipe

    teacher = save_tiny_marian(tmp_path / "t", max_position_embeddings=32)  # tokenizer: 64
    recipe = write_recipe(tmp_path / "r.yaml", translation_recipe(teacher, pairs_csv, tmp_path / "out"))
    assert main(["validate", str(recipe), "data.max_length=128", "data.max_target_length=32"]) == 2
    err = capsys.readouterr().err
    assert "fails on inputs of data.max_length=64 tokens with targets of data.max_target_length=32" in err
    assert main(["validate", str(recipe), "data.max_length=32", "data.max_target_length=32"]) == 0
    assert main(["validate", str(recipe), "data.max_length=32", "data.max_target_length=33"]) == 2
    assert "data.max_target_length=33 (it has 32 positions)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
