"""Every recipe file loads and validates; hub recipes are validated against local stand-ins."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_bert, save_tiny_marian, translation_rows, write_csv

from distill.config import load_recipe
from distill.stages import prepare

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {
        "quickstart",
        "sst2_bert_base",
        "num2words_en_fr",
        "wmt16_en_de_opus_mt",
        "wmt14_en_fr_t5",
        "conll2003_bert_ner",
        "stsb_bert_base",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_documents_itself_and_loads(path):
    text = path.read_text()
    header = text.split("\n\n")[0]
    assert "# Run:" in header and "# Needs:" in header and "# Takes:" in header, "header comment incomplete"
    cfg = load_recipe(path)
    assert cfg.description
    assert cfg.output.dir.startswith("runs/")


def test_quickstart_validates_offline(tmp_path):
    cfg = load_recipe(
        RECIPES[[p.stem for p in RECIPES].index("quickstart")], [f"output.dir={tmp_path / 'qs'}"]
    )
    plan = prepare(cfg)
    assert plan.label_names == ["negative", "neutral", "positive"]
    assert len(plan.splits["test"]) == 2000 and len(plan.splits["validation"]) == 1000
    assert 30_000 < len(plan.splits["train"]) < 34_000  # deduplicated tweets
    assert plan.teacher_config.num_hidden_layers == 6 and plan.teacher_config.hidden_size == 384
    texts = [set(plan.splits[s]["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[2]) and not (texts[0] & texts[1])


def _teacher_id(path: Path) -> str:
    return yaml.safe_load(path.read_text())["teacher"].get("name_or_path") or ""


HUB = [p for p in RECIPES if _teacher_id(p) and not _teacher_id(p).startswith("pkg:")]


def test_num2words_recipe_validates_offline(tmp_path):
    cfg = load_recipe(
        RECIPES[[p.stem for p in RECIPES].index("num2words_en_fr")], [f"output.dir={tmp_path / 'n'}"]
    )
    plan = prepare(cfg)
    assert [len(plan.splits[s]) for s in ("train", "validation", "test")] == [14500, 500, 1000]
    assert plan.teacher_config.model_type == "marian" and plan.teacher_config.vocab_size == len(
        plan.tokenizer
    )
    for text in plan.splits["test"]["target"][:200]:  # round trip on unseen French
        ids = plan.tokenizer(text)["input_ids"]
        assert plan.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_decoder_only_num2words_recipe_validates_and_runs_offline_when_shrunk(tmp_path):
    from distill.cli import main

    path = RECIPES[[p.stem for p in RECIPES].index("num2words_causal_en_fr")]
    cfg = load_recipe(path, [f"output.dir={tmp_path / 'n'}"])
    assert cfg.task == "causal_lm" and cfg.loss.on_policy > 0 and cfg.loss.sequence_kd == "mix"
    plan = prepare(cfg)
    assert [len(plan.splits[s]) for s in ("train", "validation", "test")] == [14500, 500, 1000]
    assert plan.teacher_config.model_type == "llama" and plan.teacher_config.vocab_size == len(plan.tokenizer)
    # The whole recipe, every stage, with a few steps and examples of each.
    small = [
        f"output.dir={tmp_path / 'run'}",
        "data.synthetic_examples=400",
        "data.validation_size=40",
        "data.test_size=40",
        "data.reference_examples=50",
        "teacher.train.steps=3",
        "teacher.train.batch_size=16",
        "train.steps=4",
        "train.batch_size=16",
        "train.eval_every=2",
        "eval.latency=false",
    ]
    assert main(["validate", str(path), *small]) == 0
    assert main(["run", str(path), *small]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "baseline"]
    assert report["examples"] == 40


@pytest.mark.parametrize("path", HUB, ids=lambda p: p.stem)
def test_hub_recipe_validates_against_local_stand_ins(path, tmp_path):
    """Same recipe, with the hub models and data replaced by local ones of the same shape."""
    cfg = load_recipe(path)
    assert "/" in cfg.teacher.name_or_path and cfg.data.dataset
    data = cfg.data
    overrides = ["data.dataset=", "data.dataset_config=", f"output.dir={tmp_path / 'out'}"]
    if cfg.task == "classification":
        teacher = save_tiny_bert(
            tmp_path / "teacher",
            num_hidden_layers=12,
            max_position_embeddings=512,  # as bert-base: the recipe's max_length must fit
            num_labels=2,
            id2label={0: "LABEL_0", 1: "LABEL_1"},
            label2id={"LABEL_0": 0, "LABEL_1": 1},
        )
        rows = [{data.text_column: f"good movie number {i}", data.label_column: i % 2} for i in range(3000)]
        files = {data.train_split: str(write_csv(tmp_path / "train.csv", rows))}
        if data.test_split:
            files[data.test_split] = str(write_csv(tmp_path / "test.csv", rows[:50]))
    elif cfg.task == "regression":
        from test_regression import save_regressor

        teacher = save_regressor(tmp_path / "teacher", num_hidden_layers=12, max_position_embeddings=512)
        rows = [
            {
                data.text_column: f"good movie number {i}",
                data.text_pair_column: f"a car {i}",
                data.label_column: i % 6 / 1.2,
            }
            for i in range(3000)
        ]
        files = {data.train_split: str(write_csv(tmp_path / "train.csv", rows))}
        files[data.test_split] = str(write_csv(tmp_path / "test.csv", rows[:50]))
    elif cfg.task == "token_classification":
        from test_token_classification import save_tagger, tagged_rows

        # dslim/bert-base-NER's tags and order; the data's tags are names in another order
        tags = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
        teacher = save_tagger(
            tmp_path / "teacher",
            tags=tags,
            num_hidden_layers=12,
            max_position_embeddings=512,
        )
        rows = [{data.text_column: r["tokens"], data.label_column: r["tags"]} for r in tagged_rows(300)]
        files = {}
        for split in ("train", "validation", "test"):
            file = tmp_path / f"{split}.jsonl"
            file.write_text("\n".join(json.dumps(r) for r in rows))
            files[split] = str(file)
    elif cfg.task == "multi_label_classification":
        from datasets import ClassLabel, Dataset, Features, Sequence, Value
        from test_multi_label import NAMES, labelled_rows, save_multi_label

        # The teacher's labels in another order than the data's ClassLabel names: matched by name
        emotions = list(reversed(NAMES))
        teacher = save_multi_label(
            tmp_path / "teacher", names=emotions, num_hidden_layers=12, max_position_embeddings=512
        )
        rows = labelled_rows(600)
        features = Features(
            {data.text_column: Value("string"), data.label_column: Sequence(ClassLabel(names=NAMES))}
        )
        files = {}
        for split in ("train", "validation", "test"):
            ds = Dataset.from_dict(
                {
                    data.text_column: [r["text"] for r in rows],
                    data.label_column: [[NAMES.index(t) for t in r["tags"]] for r in rows],
                },
                features=features,
            )
            files[split] = str(tmp_path / f"{split}.parquet")
            ds.to_parquet(files[split])
    elif cfg.task == "causal_lm":
        from test_causal_lm import save_causal

        # Qwen2 stand-ins with a chat template, positions for the recipe's prompt + completion
        teacher = save_causal(tmp_path / "teacher", "qwen2", positions=1024)
        student = save_causal(tmp_path / "student", "qwen2", layers=2, positions=1024)
        overrides.append(f"student.name_or_path={student}")
        rows = [
            {data.prompt_column: r["en"], data.completion_column: r["fr"]} for r in translation_rows(1200)
        ]
        files = {data.train_split: str(write_csv(tmp_path / "train.csv", rows))}
    else:
        shape = {"max_position_embeddings": 512}  # as the hub models: the recipe's lengths must fit
        teacher = save_tiny_marian(tmp_path / "teacher", encoder_layers=6, decoder_layers=6, **shape)
        if cfg.student.init == "pretrained":  # a smaller model with the very same tokenizer
            student = save_tiny_marian(tmp_path / "student", decoder_layers=2, **shape)
            overrides.append(f"student.name_or_path={student}")
        pairs = [
            {data.translation_column: {data.source_lang: r["en"], data.target_lang: r["fr"]}}
            for r in translation_rows(300)
        ]
        files = {}
        for split in {data.train_split, data.validation_split, data.test_split} - {""}:
            file = tmp_path / f"{split}.jsonl"
            file.write_text("\n".join(json.dumps(p) for p in pairs))
            files[split] = str(file)
    local = load_recipe(path, [f"teacher.name_or_path={teacher}", f"data.files={files}", *overrides])
    plan = prepare(local)
    assert {"train", "validation"} <= set(plan.splits)
    if cfg.task == "classification":
        assert len(plan.label_names) == 2 and len(plan.splits["validation"]) == data.validation_size
    if cfg.task == "token_classification":
        assert plan.label_names == tags  # the teacher's order, matched by name
    if cfg.task == "multi_label_classification":
        assert plan.label_names == emotions  # the teacher's order, the data's ids mapped by name
        by_text = {r["text"]: set(r["tags"]) for r in rows}
        for example in plan.splits["train"].select(range(20)):
            tags = by_text[example[data.text_column]]
            assert example["labels"] == [float(name in tags) for name in emotions]
    if cfg.task == "regression":
        assert plan.label_names is None and len(plan.splits["validation"]) == data.validation_size


def test_offline_regression_recipe_runs_when_shrunk(tmp_path):
    """tweet_agreement: the annotators' confidence in each tweet's sentiment, regressed; every stage
    with a few steps and examples."""
    from distill.cli import main

    path = RECIPES[[p.stem for p in RECIPES].index("tweet_agreement")]
    small = [
        f"output.dir={tmp_path / 'run'}",
        "data.max_train_examples=96",
        "teacher.finetune.steps=2",
        "teacher.finetune.batch_size=16",
        "train.steps=2",
        "train.batch_size=16",
        "eval.latency=false",
        "data.max_eval_examples=48",
    ]
    plan = prepare(load_recipe(path, small))
    assert plan.cfg.task == "regression" and plan.label_names is None
    labels = [v for split in plan.splits.values() for v in split["labels"]]
    assert 0.25 < min(labels) < 0.5 and max(labels) == 1.0  # agreement: a third (of 3 labels) to all
    assert main(["run", str(path), *small]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["primary_metric"] == "pearson" and report["examples"] == 48
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "baseline"]


def _entities(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """(form, phrase) of each tagged number, in order."""
    out: list[tuple[str, list[str]]] = []
    for word, tag in zip(words, tags, strict=True):
        if tag.startswith("B-"):
            out.append((tag[2:], [word]))
        elif tag.startswith("I-"):
            assert out and out[-1][0] == tag[2:], (words, tags)  # I- continues a B- of its form
            out[-1][1].append(word)
    return [(form, " ".join(phrase)) for form, phrase in out]


def test_tweet_numbers_puts_tagged_numbers_into_real_tweets():
    import csv

    from num2words import num2words

    from distill.config import DataConfig
    from distill.data import normalise_text
    from distill.modeling import resolve_path
    from distill.synthetic import TWEETS, tweet_numbers

    cfg = DataConfig(synthetic="tweet_numbers", synthetic_examples=600, validation_size=100, test_size=100)
    cfg.synthetic_max_number = 100_000
    data = tweet_numbers(cfg)
    assert [len(data[s]) for s in ("train", "validation", "test")] == [400, 100, 100]
    with open(resolve_path(TWEETS), encoding="latin-1", newline="") as f:
        tweets = {normalise_text(r["text"]) for r in csv.DictReader(f)}
    phrases = {}
    counts = []
    for split in ("train", "validation", "test"):
        for row in data[split]:
            entities = _entities(row["words"], row["tags"])
            counts.append(len(entities))
            assert row["mentions"] == sorted({form.lower() for form, _ in entities})
            assert row["text"] == " ".join(row["words"])
            rest = [w for w, t in zip(row["words"], row["tags"], strict=True) if t == "O"]
            assert normalise_text(" ".join(rest)) in tweets  # the tweet itself, untouched
            for form, phrase in entities:
                phrases.setdefault(split, set()).add((form, phrase))
    assert set(counts) == {0, 1, 2} and 0.15 < counts.count(0) / len(counts) < 0.35
    assert not phrases["test"] & phrases["train"] and not phrases["validation"] & phrases["train"]
    years = [p for f, p in phrases["train"] if f == "YEAR"]
    assert years and all(any(num2words(n, to="year") == p for n in range(1000, 2100)) for p in years[:5])
    again = tweet_numbers(cfg)
    assert again["test"]["words"] == data["test"]["words"]  # seeded


@pytest.mark.parametrize("name", ["tweet_numbers_ner", "tweet_numbers_multi_label"])
def test_offline_tweet_numbers_recipes_run_when_shrunk(name, tmp_path):
    from distill.cli import main

    path = RECIPES[[p.stem for p in RECIPES].index(name)]
    small = [
        f"output.dir={tmp_path / 'run'}",
        "data.synthetic_examples=400",
        "data.validation_size=40",
        "data.test_size=40",
        "teacher.finetune.steps=2",
        "teacher.finetune.batch_size=16",
        "train.steps=2",
        "train.batch_size=16",
        "eval.latency=false",
    ]
    plan = prepare(load_recipe(path, small))
    if plan.cfg.task == "token_classification":
        assert plan.label_names == [f"{p}-{f}" for p in "BI" for f in ("CARDINAL", "ORDINAL", "YEAR")] + ["O"]
    else:
        assert plan.label_names == ["cardinal", "ordinal", "year"]
    assert main(["run", str(path), *small]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["primary_metric"] == ("f1" if plan.cfg.task == "token_classification" else "micro_f1")
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "baseline"]
