"""teacher.cache: the teacher's outputs stored once, exact, keyed by what made them, and read by
the student stage without running the teacher."""

import json

import pytest
import torch
from conftest import (
    read_report,
    recipe_dict,
    save_seq2seq,
    save_tiny_bert,
    translation_recipe,
    write_recipe,
)
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from distill import teacher_store
from distill.cli import main
from distill.loss_step import LossStep


def student_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "student" / "model.safetensors"))


def store(folder):
    record = json.loads((folder / "complete.json").read_text())
    return [load_file(str(folder / name)) for name in record["shards"]], record


def bert_recipe(tmp_path, data_csv, out, **teacher):
    t = save_tiny_bert(tmp_path / "teacher", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    raw = recipe_dict(
        t,
        data_csv,
        out,
        teacher={"name_or_path": str(t), **teacher},
        train={"steps": 6, "learning_rate": 3e-3},
        eval={"latency": False},
    )
    return write_recipe(tmp_path / f"{out.name}.yaml", raw), t


def test_cached_classification_equals_online_distillation(tmp_path, data_csv):
    online, _ = bert_recipe(tmp_path, data_csv, tmp_path / "online")
    cached, teacher = bert_recipe(tmp_path, data_csv, tmp_path / "cached", cache=True, cache_shard_size=64)
    assert main(["run", str(online)]) == 0
    assert main(["run", str(cached)]) == 0
    shards, record = store(tmp_path / "cached" / "teacher_outputs")
    assert len(shards) == 5 and record["examples"] == 320  # 400 - 40 - 40, in shards of 64
    # every stored row is the teacher's logits for that training example, alone in its batch
    from distill.config import load_recipe
    from distill.plan import prepare

    plan = prepare(load_recipe(cached, ["output.overwrite=true"]))
    train = plan.task.tokenize(plan.splits, plan.tokenizer, plan.cfg.data)["train"]
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    rows = torch.cat([s["rows"] for s in shards])
    logits = torch.cat([s["logits"] for s in shards])
    assert torch.equal(rows, torch.arange(320))
    for i in (0, 77, 319):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([train[i]["input_ids"]])).logits[0]
        assert torch.allclose(logits[i], alone, atol=1e-5), i
    a, b = student_weights(tmp_path / "online"), student_weights(tmp_path / "cached")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert read_report(tmp_path / "online")["by_name"]["student"]["metrics"] == pytest.approx(
        read_report(tmp_path / "cached")["by_name"]["student"]["metrics"]
    )


def test_top_k_store_of_the_whole_vocabulary_equals_dense_distillation(tmp_path, pairs_csv):
    teacher = save_seq2seq(tmp_path / "teacher", "marian")
    raws = {}
    for name, extra in (
        ("dense", {}),
        ("full", {"cache": True, "cache_top_k": 38}),
        ("top4", {"cache": True, "cache_top_k": 4}),
    ):
        raw = translation_recipe(teacher, pairs_csv, tmp_path / name, eval={"latency": False})
        raw["teacher"].update(extra)
        raw["loss"] = {"temperature": 2.0, "alpha": 0.7}
        raws[name] = write_recipe(tmp_path / f"{name}.yaml", raw)
        assert main(["run", str(raws[name])]) == 0
    dense, full, top4 = (student_weights(tmp_path / n) for n in ("dense", "full", "top4"))
    assert all(torch.allclose(dense[k], full[k], atol=1e-5) for k in dense)
    assert not all(torch.allclose(dense[k], top4[k], atol=1e-5) for k in dense)  # k = 4 does change it
    shards, record = store(tmp_path / "top4" / "teacher_outputs")
    s = shards[0]
    assert s["ids"].shape[1] == 4 and s["ids"].dtype == torch.int32
    assert record["teacher.cache_top_k"] == 4 and record["loss.temperature"] == 2.0
    # the first example's stored tokens: the teacher's top 4 at T = 2 and the mass left over
    from distill.config import load_recipe
    from distill.plan import prepare

    plan = prepare(load_recipe(raws["top4"], ["output.overwrite=true"]))
    train = plan.task.tokenize(plan.splits, plan.tokenizer, plan.cfg.data)["train"]
    batch = plan.task.collator(plan.tokenizer, plan.teacher_config)([train[0]])
    model = AutoModelForSeq2SeqLM.from_pretrained(teacher).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(**plan.task.model_inputs(batch)).logits[0] / 2.0, -1)
    n = int(s["offsets"][1])
    assert n == len(train[0]["labels"])
    top = logp.topk(4, -1)
    assert torch.equal(s["ids"][:n].long(), top.indices)
    assert torch.allclose(s["logprobs"][:n], top.values, atol=1e-5)
    assert torch.allclose(s["tail"][:n].exp(), 1 - top.values.exp().sum(-1), atol=1e-5)
    check_streamed(tmp_path / "top4" / "teacher_outputs", train, plan)


def check_streamed(folder, train, plan):
    """The store read as batches ask: in memory only its index (32 bytes per row), and each
    batch's entries those of the shards read whole, wherever its rows lie."""
    from distill.teacher_store import TeacherStore

    streamed = TeacherStore(folder, top_k=True)
    held = sum(t.numel() * t.element_size() for t in vars(streamed).values() if isinstance(t, torch.Tensor))
    assert held == 32 * len(train) and streamed.bytes > held  # shard, local, start, length: int64 each
    shards, _ = store(folder)
    rows = torch.cat([sh["rows"] for sh in shards])
    eager = {}
    for sh in shards:
        for j, row in enumerate(sh["rows"].tolist()):
            a, b = int(sh["offsets"][j]), int(sh["offsets"][j + 1])
            eager[row] = (sh["logprobs"][a:b], sh["ids"][a:b], sh["tail"][a:b])
    picked = torch.tensor([len(rows) - 1, 0, 7, 3])  # out of order, across the store
    batch = plan.task.collator(plan.tokenizer, plan.teacher_config)([train[i] for i in picked.tolist()])
    got = streamed.batch(picked, batch["labels"])
    mask = batch["labels"] != -100
    for i, row in enumerate(picked.tolist()):
        logprobs, ids, tail = eager[row]
        assert torch.equal(got.logprobs[i][mask[i]], logprobs) and torch.equal(got.ids[i][mask[i]], ids)
        assert torch.equal(got.tail[i][mask[i]], tail)
    assert streamed.mean_tail_probability() == pytest.approx(
        torch.cat([sh["tail"] for sh in shards]).float().exp().mean().item(), rel=1e-6
    )


def test_a_store_of_other_settings_is_refused_in_one_line(tmp_path, pairs_csv, capsys):
    shared = tmp_path / "shared_store"
    teacher = save_seq2seq(tmp_path / "teacher", "marian")

    def recipe(name, teacher_path=teacher, **loss):
        raw = translation_recipe(teacher_path, pairs_csv, tmp_path / name, eval={"latency": False})
        raw["teacher"].update(cache=True, cache_top_k=4, cache_dir=str(shared))
        raw["loss"] = loss
        return write_recipe(tmp_path / f"{name}.yaml", raw)

    assert main(["run", str(recipe("first"))]) == 0
    capsys.readouterr()
    hotter = recipe("hotter", temperature=3.0)
    assert main(["validate", str(hotter)]) == 2  # settings: caught before anything is written
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(loss.temperature changed); delete it or set teacher.cache_dir" in err
    assert not (tmp_path / "hotter").exists()
    other = save_seq2seq(tmp_path / "other", "marian")
    model = AutoModelForSeq2SeqLM.from_pretrained(other)
    with torch.no_grad():
        model.lm_head.weight.mul_(
            1.01
        ) if not model.config.tie_word_embeddings else model.model.shared.weight.mul_(1.01)
    model.save_pretrained(other)
    capsys.readouterr()
    assert main(["run", str(recipe("other", other))]) == 2  # the weights: caught when the store is opened
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(teacher_weights changed)" in err
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        ["complete.json", "settings.json", "shard_00000.safetensors", "shard_00000.safetensors.json"]
    )


def test_a_later_run_reads_the_store_and_never_runs_the_teacher(tmp_path, data_csv, monkeypatch, capsys):
    shared = tmp_path / "shared_store"
    first, _ = bert_recipe(tmp_path, data_csv, tmp_path / "first", cache=True, cache_dir=str(shared))
    assert main(["run", str(first)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(teacher_store, "_compute", refuse)
    monkeypatch.setattr(LossStep, "_teacher_logits", refuse)
    second, _ = bert_recipe(tmp_path, data_csv, tmp_path / "second", cache=True, cache_dir=str(shared))
    capsys.readouterr()
    assert main(["run", str(second), "train.seed=7"]) == 0  # another seed: another student, same store
    assert "computing" not in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in shared.iterdir()} == before
    assert not torch.equal(
        student_weights(tmp_path / "first")["classifier.weight"],
        student_weights(tmp_path / "second")["classifier.weight"],
    )


def test_a_damaged_shard_is_computed_again(tmp_path, data_csv, caplog):
    shared = tmp_path / "shared_store"
    first, _ = bert_recipe(
        tmp_path, data_csv, tmp_path / "first", cache=True, cache_dir=str(shared), cache_shard_size=100
    )
    assert main(["run", str(first)]) == 0
    shard = shared / "shard_00002.safetensors"
    original = shard.read_bytes()
    damaged = bytearray(original)
    damaged[-3] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    second, _ = bert_recipe(
        tmp_path, data_csv, tmp_path / "second", cache=True, cache_dir=str(shared), cache_shard_size=100
    )
    assert main(["run", str(second)]) == 0
    assert "shard_00002.safetensors: damaged or unfinished, computed again" in caplog.text
    assert shard.read_bytes() == original
    a, b = student_weights(tmp_path / "first"), student_weights(tmp_path / "second")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cache_with_a_hidden_state_loss_is_refused(tmp_path, data_csv, capsys):
    recipe, _ = bert_recipe(tmp_path, data_csv, tmp_path / "out", cache=True)
    assert main(["validate", str(recipe), "loss.hidden_weight=1.0", "loss.hidden=mse"]) == 2
    assert (
        "teacher.cache: the store keeps the teacher's outputs, not its hidden states"
        in capsys.readouterr().err
    )
