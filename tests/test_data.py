from pathlib import Path

import pytest
from conftest import LABELS, sentiment_rows, write_csv
from transformers import BertConfig

from distill.config import DataConfig
from distill.data import load_raw, normalise_text
from distill.errors import DistillError
from distill.tasks import classification


def load(data):
    return load_raw(data, classification.columns(data))


def cfg(path, **kw):
    base = dict(
        files={"train": str(path)},
        text_column="text",
        label_column="sentiment",
        validation_size=20,
        test_size=30,
    )
    base.update(kw)
    return DataConfig(**base)


def test_carved_splits_are_seeded_disjoint_and_sized(tmp_path):
    path = write_csv(
        tmp_path / "d.csv", [{"text": f"text number {i}", "sentiment": LABELS[i % 3]} for i in range(200)]
    )
    a = load(cfg(path))
    b = load(cfg(path))
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (150, 20, 30)
    assert a["test"]["text"] == b["test"]["text"]  # same seed, same split
    c = load(cfg(path, seed=7))
    assert set(c["test"]["text"]) != set(a["test"]["text"])
    splits = [set(a[s]["text"]) for s in ("train", "validation", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])


def test_fractions_and_existing_splits(tmp_path):
    train = write_csv(
        tmp_path / "train.csv", [{"text": f"t {i}", "sentiment": "positive"} for i in range(100)]
    )
    test = write_csv(tmp_path / "test.csv", [{"text": f"x {i}", "sentiment": "negative"} for i in range(10)])
    out = load(cfg(train, files={"train": str(train), "test": str(test)}, validation_size=0.1))
    assert len(out["test"]) == 10 and out["test"]["text"][0] == "x 0"  # given test split used as is
    assert len(out["validation"]) == 10 and len(out["train"]) == 90


def test_normalise_text():
    assert normalise_text("RT @someone: Self-driving  cars http://t.co/x ") == "self-driving cars"
    assert normalise_text("rt @a: rt @b: Hello") == "hello"
    assert normalise_text("Hello") == normalise_text("hello   ")


def test_dedupe_drops_repeats_conflicts_and_leaks(tmp_path):
    rows = [
        {"text": "google car is great", "sentiment": "positive"},
        {"text": "RT @fan: google car is great", "sentiment": "positive"},
        {"text": "google  car is GREAT http://t.co/1", "sentiment": "positive"},
        {"text": "this is ambiguous", "sentiment": "positive"},
        {"text": "RT @x: this is ambiguous", "sentiment": "negative"},
    ] + [{"text": f"unique text {i}", "sentiment": LABELS[i % 3]} for i in range(60)]
    path = write_csv(tmp_path / "d.csv", rows)
    out = load(cfg(path, dedupe=True, validation_size=5, test_size=5))
    texts = [normalise_text(t) for s in out.values() for t in s["text"]]
    assert len(texts) == len(set(texts)) == 61  # 60 unique + one "google car", the conflicting pair dropped
    assert "this is ambiguous" not in texts
    raw = load(cfg(path, dedupe=False, validation_size=5, test_size=5))
    assert sum(len(s) for s in raw.values()) == 65


def test_drop_train_rows_also_in_given_test(tmp_path):
    train = write_csv(
        tmp_path / "train.csv", [{"text": f"t {i}", "sentiment": "positive"} for i in range(50)]
    )
    test = write_csv(
        tmp_path / "test.csv",
        [{"text": "T 3", "sentiment": "positive"}, {"text": "new", "sentiment": "negative"}],
    )
    out = load(cfg(train, files={"train": str(train), "test": str(test)}, dedupe=True, validation_size=5))
    assert "t 3" not in list(out["train"]["text"]) + list(out["validation"]["text"])


def test_labels_from_strings_are_sorted_names(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(90))
    raw = load(cfg(path))
    splits, names = classification.prepare_targets(raw, raw_cfg := cfg(path), None, head_trained=False)
    assert names == ["negative", "neutral", "positive"]
    for split in splits.values():
        for text_label, i in zip(split["sentiment"], split["labels"], strict=True):
            assert names[i] == text_label
    # Explicit order wins.
    raw_cfg.label_names = ["positive", "negative", "neutral"]
    splits, names = classification.prepare_targets(raw, raw_cfg, None, head_trained=False)
    assert names == ["positive", "negative", "neutral"]
    assert all(
        names[i] == t for t, i in zip(splits["train"]["sentiment"], splits["train"]["labels"], strict=True)
    )


def test_labels_follow_a_trained_teachers_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(90))
    raw = load(cfg(path))
    teacher = BertConfig(num_labels=3, id2label={0: "Positive", 1: "Negative", 2: "Neutral"})
    splits, names = classification.prepare_targets(raw, cfg(path), teacher, head_trained=True)
    assert names == ["Positive", "Negative", "Neutral"]
    assert all(
        names[i].lower() == t
        for t, i in zip(splits["train"]["sentiment"], splits["train"]["labels"], strict=True)
    )
    other = BertConfig(num_labels=3, id2label={0: "spam", 1: "ham", 2: "eggs"})
    with pytest.raises(
        DistillError, match=r"the teacher's labels \['spam', 'ham', 'eggs'\] differ from the data's"
    ):
        classification.prepare_targets(raw, cfg(path), other, head_trained=True)
    # Data whose labels are some of a named head's: the head's labels, in its order.
    four = BertConfig(num_labels=4, id2label={0: "Positive", 1: "Sarcastic", 2: "Negative", 3: "Neutral"})
    splits, names = classification.prepare_targets(raw, cfg(path), four, head_trained=True)
    assert names == ["Positive", "Sarcastic", "Negative", "Neutral"]
    assert set(splits["train"]["labels"]) == {0, 2, 3}
    two = BertConfig(num_labels=2)
    with pytest.raises(
        DistillError, match=r"teacher's head has 2 labels .* data has 3 .*teacher.finetune.enabled=true"
    ):
        classification.prepare_targets(raw, cfg(path), two, head_trained=True)


def test_integer_labels_and_out_of_range(tmp_path):
    rows = [{"text": f"t {i}", "sentiment": i % 2} for i in range(60)]
    path = write_csv(tmp_path / "d.csv", rows)
    raw = load(cfg(path, validation_size=5, test_size=5))
    splits, names = classification.prepare_targets(raw, cfg(path), None, head_trained=False)
    assert names == ["0", "1"] and splits["train"]["labels"] == splits["train"]["sentiment"]
    test = write_csv(tmp_path / "test.csv", [{"text": "x", "sentiment": 5}])
    data = cfg(path, files={"train": str(path), "test": str(test)}, validation_size=5)
    with pytest.raises(DistillError, match=r"label 5 in split 'test' is outside the label set \(0-1"):
        classification.prepare_targets(load(data), data, None, head_trained=False)


def test_unknown_string_label_in_test_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(60))
    test = write_csv(tmp_path / "test.csv", [{"text": "good car", "sentiment": "sarcastic"}])
    data = cfg(train, files={"train": str(train), "test": str(test)}, validation_size=5)
    with pytest.raises(DistillError, match=r"label 'sarcastic' in split 'test' is not one of the labels"):
        classification.prepare_targets(load(data), data, None, head_trained=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(text_column="tweet"),
            r"data.text_column: no column 'tweet' in split 'train' \(columns: text, sentiment\)",
        ),
        (dict(label_column="y"), r"data.label_column: no column 'y'"),
        (dict(files={"train": "/no/such/file.csv"}), r"data.files.train: file not found: /no/such/file.csv"),
        (dict(files={"train": "/tmp/x.txt"}), None),
        (dict(validation_size=500), r"data.validation_size: cannot carve 500 validation examples"),
    ],
)
def test_bad_data_input(tmp_path, change, message):
    path = write_csv(tmp_path / "d.csv", sentiment_rows(60))
    if message is None:
        txt = tmp_path / "x.txt"
        txt.write_text("hello")
        change = dict(files={"train": str(txt)})
        message = r"data.files.train: unsupported file type '.txt'"
    with pytest.raises(DistillError, match=message):
        load(cfg(path, **change))


def test_empty_split_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(60))
    empty = tmp_path / "test.csv"
    empty.write_text("text,sentiment\n")
    with pytest.raises(DistillError, match="the test split is empty"):
        load(cfg(train, files={"train": str(train), "test": str(empty)}))


def test_json_and_latin1_csv(tmp_path):
    import json

    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in sentiment_rows(60)))
    assert len(load(cfg(path))["train"]) == 10
    latin = tmp_path / "latin.csv"
    latin.write_bytes(
        b"text,sentiment\n" + "".join(f"caf\xe9 {i},positive\n" for i in range(60)).encode("latin-1")
    )
    out = load(cfg(latin, encoding="latin-1"))
    assert any("café" in t for t in out["train"]["text"])


def test_parquet_files(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame(sentiment_rows(60)).to_parquet(path)
    out = load(cfg(path, validation_size=10, test_size=10))
    assert (len(out["train"]), len(out["validation"]), len(out["test"])) == (40, 10, 10)


def test_tokenization_is_cached_and_reused(tmp_path):
    from conftest import make_tokenizer

    path = write_csv(tmp_path / "d.csv", sentiment_rows(90))
    data = cfg(path, max_length=6)
    tok = make_tokenizer(tmp_path / "tok")
    first = classification.tokenize(
        classification.prepare_targets(load(data), data, None, False)[0], tok, data
    )
    files = [f["filename"] for f in first["train"].cache_files]
    assert files and all(Path(f).is_file() for f in files)
    mtimes = [Path(f).stat().st_mtime_ns for f in files]
    again = classification.tokenize(
        classification.prepare_targets(load(data), data, None, False)[0], tok, data
    )
    assert [f["filename"] for f in again["train"].cache_files] == files
    assert [Path(f).stat().st_mtime_ns for f in files] == mtimes  # read back, not recomputed
    assert max(len(ids) for ids in again["train"]["input_ids"]) == 6  # truncated to max_length
    other = classification.tokenize(
        classification.prepare_targets(load(data), data, None, False)[0], tok, cfg(path, max_length=4)
    )
    assert [f["filename"] for f in other["train"].cache_files] != files  # other settings, other cache


def test_integer_labels_that_do_not_start_at_0_become_the_ids_that_occur(tmp_path):
    """Star ratings 1-5: five labels named '1'-'5' (ids 0-4), not six with a class '0' never seen."""
    rows = [{"text": f"review {i}", "stars": 1 + i % 5} for i in range(100)]
    path = write_csv(tmp_path / "stars.csv", rows)
    data = cfg(path, label_column="stars")
    splits, names = classification.prepare_targets(load(data), data, None, head_trained=False)
    assert names == ["1", "2", "3", "4", "5"]
    for split in splits.values():
        assert all(names[i] == str(s) for i, s in zip(split["labels"], split["stars"], strict=True))
    # With a teacher's trained head the integers are its ids: 1-5 do not fit 5 labels (0-4).
    five = BertConfig(num_labels=5)
    with pytest.raises(
        DistillError, match=r"labels of 'stars' run 1-5, but the teacher's head has 5 labels \(ids 0-4\)"
    ):
        classification.prepare_targets(load(data), data, five, head_trained=True)


def test_a_single_label_is_refused_in_one_line(tmp_path):
    path = write_csv(tmp_path / "one.csv", [{"text": f"t {i}", "sentiment": "positive"} for i in range(100)])
    with pytest.raises(
        DistillError, match=r"has 1 label \['positive'\] in the training split: a classifier needs 2"
    ):
        classification.prepare_targets(load(cfg(path)), cfg(path), None, head_trained=False)


def test_held_out_rows_also_in_training_are_counted_in_a_warning(tmp_path, caplog):
    rows = [{"text": f"text {i % 60}", "sentiment": LABELS[i % 3]} for i in range(200)]  # each text 3-4 times
    path = write_csv(tmp_path / "repeats.csv", rows)
    with caplog.at_level("WARNING", logger="distill.data"):
        out = load(cfg(path))
    repeated = sum(t in set(out["train"]["text"]) for t in out["test"]["text"])
    assert repeated > 0
    assert f"{repeated} of the 30 test examples also appear in the training split" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="distill.data"):
        load(cfg(path, dedupe=True))
    assert "also appear in the training split" not in caplog.text
