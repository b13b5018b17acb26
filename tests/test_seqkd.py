"""Sequence-level KD: the teacher's beam outputs as targets, generated once, resumable, reused."""

import json
import shutil

import pytest
from accelerate import Accelerator
from conftest import marian_pair, translation_recipe, write_recipe

from distill.cli import main
from distill.tasks import translation as task


def pseudo_setup(tmp_path, translation_tokenized):
    tok, data = translation_tokenized
    teacher, _ = marian_pair()
    collate = task.collator(tok, teacher.config)
    settings = {"num_beams": 2, "max_new_tokens": 6}
    return teacher, data.select(range(20)), collate, settings


def test_pseudo_targets_are_the_teachers_beam_outputs(tmp_path, translation_tokenized):
    from distill import seqkd

    teacher, train, collate, settings = pseudo_setup(tmp_path, translation_tokenized)
    out = seqkd.pseudo_targets(
        Accelerator(),
        teacher,
        train,
        collate,
        tmp_path / "p",
        settings=settings,
        batch_size=8,
        chunk_size=8,
        task=task,
    )
    assert len(out) == 20 and out["input_ids"] == train["input_ids"]
    batch = {k: v.to(teacher.device) for k, v in collate([train[i] for i in range(3)]).items()}
    expected = teacher.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        num_beams=2,
        max_new_tokens=6,
        do_sample=False,
    )
    for i in range(3):
        seq = expected[i].tolist()[1:]  # without the decoder start token
        seq = seq[: seq.index(1) + 1] if 1 in seq else [t for t in seq if t != 0] + [1]
        assert out[i]["labels"] == seq
        assert out[i]["labels"][-1] == 1  # ends with </s>


def test_pseudo_target_generation_resumes_and_is_reused(tmp_path, translation_tokenized, monkeypatch):
    from distill import seqkd
    from distill.errors import DistillError

    teacher, train, collate, settings = pseudo_setup(tmp_path, translation_tokenized)
    reference = seqkd.pseudo_targets(
        Accelerator(),
        teacher,
        train,
        collate,
        tmp_path / "ref",
        settings=settings,
        batch_size=8,
        chunk_size=8,
        task=task,
    )

    real, calls = seqkd._generate, []

    def crashing(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped while the third chunk was being generated
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(seqkd, "_generate", crashing)
    with pytest.raises(KeyboardInterrupt):
        seqkd.pseudo_targets(
            Accelerator(),
            teacher,
            train,
            collate,
            tmp_path / "p",
            settings=settings,
            batch_size=8,
            chunk_size=8,
            task=task,
        )
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "settings.json",
        "shard_00000.safetensors",
        "shard_00000.safetensors.json",
        "shard_00001.safetensors",
        "shard_00001.safetensors.json",
    ]

    calls.clear()
    monkeypatch.setattr(seqkd, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = seqkd.pseudo_targets(
        Accelerator(),
        teacher,
        train,
        collate,
        tmp_path / "p",
        settings=settings,
        batch_size=8,
        chunk_size=8,
        task=task,
    )
    assert len(calls) == 1  # only the missing third chunk (20 examples, chunks of 8)
    assert resumed["labels"] == reference["labels"] and resumed["input_ids"] == reference["input_ids"]

    calls.clear()
    again = seqkd.pseudo_targets(
        Accelerator(),
        teacher,
        train,
        collate,
        tmp_path / "p",
        settings=settings,
        batch_size=8,
        chunk_size=8,
        task=task,
    )
    assert calls == [] and again["labels"] == reference["labels"]  # a finished set is reused

    with pytest.raises(DistillError, match="made with other settings"):
        seqkd.pseudo_targets(
            Accelerator(),
            teacher,
            train,
            collate,
            tmp_path / "p",
            settings={**settings, "num_beams": 3},
            batch_size=8,
            chunk_size=8,
            task=task,
        )

    # Unfinished chunks made with other settings are never mixed into a set.
    shutil.rmtree(tmp_path / "p")
    calls.clear()
    monkeypatch.setattr(seqkd, "_generate", crashing)
    with pytest.raises(KeyboardInterrupt):
        seqkd.pseudo_targets(
            Accelerator(),
            teacher,
            train,
            collate,
            tmp_path / "p",
            settings=settings,
            batch_size=8,
            chunk_size=8,
            task=task,
        )
    calls.clear()
    monkeypatch.setattr(seqkd, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = {**settings, "num_beams": 1}
    seqkd.pseudo_targets(
        Accelerator(),
        teacher,
        train,
        collate,
        tmp_path / "p",
        settings=other,
        batch_size=8,
        chunk_size=8,
        task=task,
    )
    assert len(calls) == 3  # every chunk made anew, none of the two left by the other settings


@pytest.mark.parametrize("mode", ["replace", "mix"])
def test_sequence_level_kd_end_to_end(tmp_path, marian_dir, pairs_csv, mode):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml",
        translation_recipe(marian_dir, pairs_csv, out, loss={"sequence_kd": mode, "sequence_kd_beams": 2}),
    )
    assert main(["run", str(recipe), "eval.latency=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "pseudo_targets" / "complete.json").read_text())["examples"] == 260
    assert results["train_examples"] == (260 if mode == "replace" else 520)


def test_few_references_and_a_transfer_set(tmp_path, marian_dir, pairs_csv):
    """data.reference_examples: the student and the baseline see 30 references; the teacher's
    outputs cover all 260 training sources, and are reused by a run with all references."""
    out = tmp_path / "out"
    raw = translation_recipe(
        marian_dir,
        pairs_csv,
        out,
        loss={"sequence_kd": "mix", "sequence_kd_beams": 2},
        data={"reference_examples": 30},
        train={"steps": 2, "baseline": True},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe), "eval.latency=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_examples"] == 30 + 260
    assert json.loads((out / "pseudo_targets" / "complete.json").read_text())["examples"] == 260
    assert "; 30 training examples |" in (out / "baseline" / "README.md").read_text()
    assert "; 290 training examples |" in (out / "student" / "README.md").read_text()
    # The teacher's outputs do not depend on how many references the student sees.
    stamp = (out / "pseudo_targets" / "complete.json").stat().st_mtime_ns
    assert (
        main(["run", str(recipe), "eval.latency=false", "output.overwrite=true", "data.reference_examples=0"])
        == 0
    )
    assert (out / "pseudo_targets" / "complete.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["train_examples"] == 260 + 260
