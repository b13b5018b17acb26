"""teacher.cache_format: compact: the store's top-k entries in a fixed number of bytes per token,
the ids exact, the log-probabilities within the bound the quantization promises."""

import json

import pytest
import torch
from conftest import save_seq2seq, translation_recipe, write_recipe
from safetensors.torch import load_file

from distill import store_codec
from distill.cli import main
from distill.losses import top_k_of


def sorted_by_id(logprobs, ids):
    order = ids.argsort(-1)
    return logprobs.gather(-1, order), ids.gather(-1, order)


def kl_per_token(exact_lp, exact_tail, lp, tail):
    p = torch.cat([exact_lp, exact_tail.clamp(min=-1e4).unsqueeze(-1)], -1)
    q = torch.cat([lp, tail.clamp(min=-1e4).unsqueeze(-1)], -1)
    return (p.exp() * (p - q)).sum(-1)


@pytest.mark.parametrize(
    ("vocabulary", "k", "bits"), [(151_936, 128, 6), (151_936, 32, 4), (38, 38, 8), (1000, 7, 2)]
)
def test_round_trip_keeps_the_ids_and_bounds_the_kl(vocabulary, k, bits):
    torch.manual_seed(vocabulary + k)
    logits = torch.randn(300, vocabulary) * torch.rand(300, 1) * 6  # peaked and flat tokens
    logits[0, :] = 0.0  # a uniform token: every kept entry equal
    top = top_k_of(logits, k, 1.0)
    parts = store_codec.encode(top.logprobs, top.ids, top.tail, vocabulary, bits)
    assert sum(t[0].numel() * t.element_size() for t in parts.values()) == store_codec.bytes_per_token(
        vocabulary, k, bits
    )
    lp, ids, tail = store_codec.decode(parts, k, vocabulary, bits)
    exact_lp, exact_ids = sorted_by_id(top.logprobs, top.ids)
    assert torch.equal(ids.long(), exact_ids)
    # The two sides of the mass: the exact ones to their own float32 rounding (a log-softmax over
    # 151,936 ids sums to 1 ± 4e-5); the decoded ones sum to 1.
    assert torch.allclose(tail.exp(), top.tail.exp(), atol=5e-5)
    assert torch.allclose(lp.logsumexp(-1).exp(), top.logprobs.logsumexp(-1).exp(), atol=5e-5)
    step = parts["step"].float()
    assert ((lp - exact_lp).abs() <= step.unsqueeze(-1) + 1e-5).all()  # one step at most, per entry
    kl = kl_per_token(exact_lp, top.tail, lp, tail)
    assert (kl <= (step.exp() - 1) ** 2 + 5e-5).all()  # KL ≤ χ² ≤ (e^step - 1)²
    assert kl.mean() > 0 or bits == 8  # the codes do lose something
    assert torch.allclose(torch.cat([lp, tail.unsqueeze(-1)], -1).exp().sum(-1), torch.ones(300), atol=1e-5)


def test_entries_of_no_probability_and_an_empty_tail_survive():
    logits = torch.full((2, 50), -float("inf"))
    logits[:, :3] = torch.tensor([2.0, 1.0, 0.0])
    top = top_k_of(logits, 6, 1.0)  # three kept entries of probability 0, nothing left for the tail
    parts = store_codec.encode(top.logprobs, top.ids, top.tail, 50, 5)
    lp, ids, tail = store_codec.decode(parts, 6, 50, 5)
    assert torch.isfinite(lp).all() and torch.equal(ids.long(), top.ids.sort(-1).values)
    probs = lp.exp()
    assert probs[:, :3].sum(-1) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert (probs[:, 3:] < 1e-20).all()
    empty = store_codec.encode(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.long), torch.zeros(0), 50, 5)
    assert [t.shape[0] for t in store_codec.decode(empty, 4, 50, 5)] == [0, 0, 0]


def test_k128_over_a_qwen_vocabulary_fits_in_300_bytes_per_token():
    assert store_codec.bytes_per_token(151_936, 128, 6) == 297
    assert store_codec.bytes_per_token(151_936, 128, 5) == 281
    assert store_codec.bytes_per_token(151_936, 32, 6) == 87  # the exact format: 8 * 32 + 4 = 260


def test_a_compact_store_decodes_to_the_exact_store_within_its_bound(
    tmp_path, pairs_csv, capsys, monkeypatch
):
    """The same teacher and data stored both ways: the compact shards are smaller, read back as
    batches ask they equal the shards decoded whole, and every token is within its bound."""
    from distill.config import load_recipe
    from distill.plan import prepare
    from distill.teacher_store import TeacherStore

    teacher = save_seq2seq(tmp_path / "teacher", "marian")
    recipes = {}
    for name, extra in (("exact", {}), ("compact", {"cache_format": "compact", "cache_bits": 4})):
        raw = translation_recipe(teacher, pairs_csv, tmp_path / name, eval={"latency": False})
        raw["teacher"].update(cache=True, cache_top_k=16, cache_shard_size=64, **extra)
        raw["loss"] = {"temperature": 2.0, "alpha": 0.7}
        recipes[name] = write_recipe(tmp_path / f"{name}.yaml", raw)
        assert main(["run", str(recipes[name])]) == 0
    out = capsys.readouterr().out
    exact, compact = (tmp_path / n / "teacher_outputs" for n in ("exact", "compact"))
    record = json.loads((compact / "complete.json").read_text())
    assert record["teacher.cache_format"] == "compact-1" and record["teacher.cache_bits"] == 4
    names = record["shards"]
    assert len(names) > 1 and names == json.loads((exact / "complete.json").read_text())["shards"]
    tokens = 0
    for name in names:
        e, c = load_file(str(exact / name)), load_file(str(compact / name))
        assert torch.equal(e["rows"], c["rows"]) and torch.equal(e["offsets"], c["offsets"])
        k, bits, vocabulary = c["layout"].tolist()
        assert (k, bits) == (16, 4) and c["codes"].dtype == torch.uint8
        lp, ids, tail = store_codec.decode(c, k, vocabulary, bits)
        exact_lp, exact_ids = sorted_by_id(e["logprobs"], e["ids"].long())
        assert torch.equal(ids.long(), exact_ids)
        assert torch.allclose(tail.exp(), e["tail"].exp(), atol=5e-5)
        kl = kl_per_token(exact_lp, e["tail"], lp, tail)
        assert (kl <= (c["step"].float().exp() - 1) ** 2 + 5e-5).all(), name
        tokens += len(tail)
    exact_store, compact_store = TeacherStore(exact, top_k=True), TeacherStore(compact, top_k=True)
    assert compact_store.bytes == tokens * store_codec.bytes_per_token(vocabulary, 16, 4)  # 21 against 132
    assert f", {store_codec.bytes_per_token(vocabulary, 16, 4)} bytes per target token;" in out
    assert ", 132 bytes per target token;" in out  # the exact store: 16 * 8 + 4
    assert compact_store.bytes < exact_store.bytes / 3
    # read as the student's batches ask: out of order, across shards, equal to the whole shards decoded
    plan = prepare(load_recipe(recipes["compact"], ["output.overwrite=true"]))
    train = plan.task.tokenize(plan.splits, plan.tokenizer, plan.cfg.data)["train"]
    picked = torch.tensor([len(train) - 1, 0, 70, 3])
    batch = plan.task.collator(plan.tokenizer, plan.teacher_config)([train[i] for i in picked.tolist()])
    got, want = compact_store.batch(picked, batch["labels"]), exact_store.batch(picked, batch["labels"])
    mask = batch["labels"] != -100
    assert torch.equal(got.ids[mask].long(), want.ids[mask].long().sort(-1).values)
    assert not torch.equal(got.logprobs[mask], sorted_by_id(want.logprobs[mask], want.ids[mask].long())[0])
    assert (
        got.logprobs[mask] - sorted_by_id(want.logprobs[mask], want.ids[mask].long())[0]
    ).abs().max() < 0.5
    # The coded bytes read as the batch asks are the shards' bytes: decoded, bit for bit what the
    # same tokens gathered from the whole shards decode to (decoding whole shards at once differs
    # in the last bit at most: exp and log are vectorised by position).
    coded, whole = {}, {}
    for name in names:
        c = load_file(str(compact / name))
        lp, ids, tail = store_codec.decode(c, 16, vocabulary, 4, chunk=10**9)  # in one piece
        for j, row in enumerate(c["rows"].tolist()):
            a, b = int(c["offsets"][j]), int(c["offsets"][j + 1])
            coded[row] = {key: c[key][a:b] for key in ("ids", "codes", "step", "mass")}
            whole[row] = (lp[a:b], ids[a:b], tail[a:b])
    gathered = {
        key: torch.cat([coded[r][key] for r in picked.tolist()]) for key in ("ids", "codes", "step", "mass")
    }
    lp, ids, tail = store_codec.decode(gathered, 16, vocabulary, 4)
    assert torch.equal(got.logprobs[mask], lp) and torch.equal(got.ids[mask], ids)
    assert torch.equal(got.tail[mask], tail)
    for i, row in enumerate(picked.tolist()):
        lp, ids, tail = whole[row]
        assert torch.allclose(got.logprobs[i][mask[i]], lp, rtol=1e-6, atol=0) and torch.equal(
            got.ids[i][mask[i]], ids
        )
        assert torch.allclose(got.tail[i][mask[i]], tail, rtol=1e-6, atol=0)
    # a reader that may keep two shard files open (the rows lie in three): the same batch
    from distill import teacher_store

    monkeypatch.setattr(teacher_store, "OPEN_SHARDS", 2)
    few = TeacherStore(compact, top_k=True)
    again = few.batch(picked, batch["labels"])
    assert (
        len(few._open) == 2 and torch.equal(again.logprobs, got.logprobs) and torch.equal(again.ids, got.ids)
    )
    assert compact_store.mean_tail_probability() == pytest.approx(
        torch.cat([v[2] for v in whole.values()]).exp().mean().item(), rel=1e-5
    )
    assert (tmp_path / "compact" / "student" / "model.safetensors").is_file()


def test_a_store_of_another_format_is_refused_in_one_line(tmp_path, pairs_csv, capsys):
    teacher = save_seq2seq(tmp_path / "teacher", "marian")
    shared = tmp_path / "store"

    def recipe(name, **teacher_keys):
        raw = translation_recipe(teacher, pairs_csv, tmp_path / name, eval={"latency": False})
        raw["teacher"].update(cache=True, cache_top_k=4, cache_dir=str(shared), **teacher_keys)
        return write_recipe(tmp_path / f"{name}.yaml", raw)

    assert main(["run", str(recipe("compact", cache_format="compact"))]) == 0
    capsys.readouterr()
    assert (
        main(["validate", str(recipe("exact"))]) == 2
    )  # switching format: caught before anything is written
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "(teacher.cache_bits, teacher.cache_format changed)" in err
    assert main(["validate", str(recipe("coarser", cache_format="compact", cache_bits=3))]) == 2
    assert "(teacher.cache_bits changed)" in capsys.readouterr().err
    # a store written by a later format: refused when it is opened, naming the format
    from distill.errors import DistillError
    from distill.teacher_store import TeacherStore

    record = json.loads((shared / "complete.json").read_text())
    record["teacher.cache_format"] = "compact-9"
    (shared / "complete.json").write_text(json.dumps(record))
    with pytest.raises(DistillError, match="format 'compact-9', which this version of distill does not read"):
        TeacherStore(shared, top_k=True)


def test_compact_is_refused_for_a_classification_store(tmp_path, data_csv, capsys):
    from conftest import recipe_dict, save_tiny_bert

    t = save_tiny_bert(tmp_path / "teacher")
    raw = recipe_dict(
        t,
        data_csv,
        tmp_path / "out",
        teacher={"name_or_path": str(t), "cache": True, "cache_format": "compact"},
    )
    capsys.readouterr()
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "teacher.cache_format: compact is for token-level tasks" in err


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"cache_format": "bits"}, "teacher.cache_format: "),
        ({"cache_format": "compact", "cache_bits": 1}, "teacher.cache_bits: 1 is not between 2 and 12"),
        ({"cache_bits": 4}, "teacher.cache_bits: only with teacher.cache_format=compact"),
    ],
)
def test_store_format_keys_are_checked_in_one_line(tmp_path, pairs_csv, capsys, keys, message):
    teacher = save_seq2seq(tmp_path / "teacher", "marian")
    raw = translation_recipe(teacher, pairs_csv, tmp_path / "out")
    raw["teacher"].update(cache=True, **keys)
    capsys.readouterr()
    assert main(["validate", str(write_recipe(tmp_path / "r.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert not (tmp_path / "out").exists()
