"""Every recipe file loads and validates; hub recipes are validated against local stand-ins."""

from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_bert, write_csv

from distill.config import load_recipe
from distill.run import prepare

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "sst2_bert_base"} <= names


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


HUB = [p for p in RECIPES if not yaml.safe_load(p.read_text())["teacher"]["name_or_path"].startswith("pkg:")]


@pytest.mark.parametrize("path", HUB, ids=lambda p: p.stem)
def test_hub_recipe_validates_against_local_stand_ins(path, tmp_path):
    """Same recipe, with the hub teacher and data replaced by local files of the same shape."""
    raw = yaml.safe_load(path.read_text())
    cfg = load_recipe(path)
    assert "/" in cfg.teacher.name_or_path and (cfg.data.dataset or cfg.data.files)
    teacher = save_tiny_bert(
        tmp_path / "teacher",
        num_hidden_layers=12,
        num_labels=2,
        id2label={0: "LABEL_0", 1: "LABEL_1"},
        label2id={"LABEL_0": 0, "LABEL_1": 1},
    )
    data = cfg.data
    rows = [{data.text_column: f"good movie number {i}", data.label_column: i % 2} for i in range(3000)]
    files = {data.train_split: str(write_csv(tmp_path / "train.csv", rows))}
    if data.test_split:
        files[data.test_split] = str(write_csv(tmp_path / "test.csv", rows[:50]))
    local = load_recipe(
        path,
        [
            f"teacher.name_or_path={teacher}",
            "data.dataset=",
            "data.dataset_config=",
            f"data.files={files}",
            f"output.dir={tmp_path / 'out'}",
        ],
    )
    plan = prepare(local)
    assert len(plan.label_names) == 2
    assert raw["train"]["steps"] > 0 and len(plan.splits["validation"]) == data.validation_size
