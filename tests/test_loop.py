import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from conftest import make_tokenizer, sentiment_rows, tiny_bert_config
from datasets import Dataset, DatasetDict
from transformers import BertForSequenceClassification

from distill.batches import LengthGroupedSampler, endless, example_lengths, make_dataloader
from distill.config import DataConfig, LossConfig, TrainConfig
from distill.loop import LossStep, StageData, backward_step, train
from distill.losses import hard_ce
from distill.modeling import HiddenProjection, copy_layers, freeze
from distill.tasks import classification as task


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"))
    rows = sentiment_rows(64, seed=3)
    names = ["negative", "neutral", "positive"]
    ds = Dataset.from_list([{"text": r["text"], "labels": names.index(r["sentiment"])} for r in rows])
    splits = DatasetDict(train=ds.select(range(48)), validation=ds.select(range(48, 64)))
    data = DataConfig(files={"train": "unused"}, text_column="text", max_length=16)
    return tok, task.tokenize(splits, tok, data)


def models(dropout=0.0):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(
        tiny_bert_config(33, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    )
    with torch.no_grad():  # a confident teacher, so that the soft targets carry information
        teacher.classifier.weight.mul_(30.0)
    student = copy_layers(teacher, [0, 2])
    return freeze(teacher), student


def run_steps(tokenized, tmp_path, *, batch_size, accum, steps=1, loss=None, lr=1e-2):
    tok, data = tokenized
    teacher, student = models()
    before = copy.deepcopy(teacher.state_dict())
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=1)
    )
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=lr,
        warmup_ratio=0.0,
        seed=1,
    )
    step = LossStep(task, loss or LossConfig(alpha=0.5, temperature=2.0), teacher=teacher)
    model, result = train(
        accelerator,
        name="t",
        cfg=cfg,
        student=student,
        loss_step=step,
        data=StageData(data["train"], data["validation"], task.collator(tok), task, 8),
        stage_dir=tmp_path,
        resume=False,
    )
    for k, v in teacher.state_dict().items():
        assert torch.equal(v.cpu(), before[k].cpu()), f"teacher weight {k} changed"
    return accelerator.unwrap_model(model), result


def grads_for(tokenized, split_sizes, loss):
    tok, data = tokenized
    collate = task.collator(tok)
    teacher, student = models()
    student.train()
    rows = [data["train"][i] for i in range(sum(split_sizes))]
    micro, start = [], 0
    for size in split_sizes:
        micro.append(collate(rows[start : start + size]))
        start += size
    totals = backward_step(Accelerator(), student, LossStep(task, loss, teacher=teacher), micro)
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, totals


@pytest.mark.parametrize(
    "loss", [LossConfig(alpha=0.5, temperature=2.0), LossConfig(soft="jsd", alpha=0.9, temperature=4.0)]
)
def test_accumulation_gives_the_gradient_of_one_big_batch(tokenized, loss):
    whole, totals = grads_for(tokenized, [8], loss)
    assert totals["items"].item() == 8
    for sizes in ([4, 4], [2, 2, 2, 2], [5, 3], [1, 7]):
        split, _ = grads_for(tokenized, sizes, loss)
        for name, g in whole.items():
            assert torch.allclose(g, split[name], atol=1e-7, rtol=1e-4), (sizes, name)
    # The gradient is that of the mean over the 8 examples: not a sum, not a mean of means.
    tok, data = tokenized
    teacher, student = models()
    batch = task.collator(tok)([data["train"][i] for i in range(8)])
    (LossStep(task, loss, teacher=teacher)(student, batch)["loss"] / 8).backward()
    name = "classifier.weight"
    assert torch.allclose(student.classifier.weight.grad, whole[name], atol=1e-7, rtol=1e-4)


def test_a_training_step_leaves_the_teacher_untouched(tokenized, tmp_path):
    run_steps(tokenized, tmp_path, batch_size=4, accum=2, steps=2)  # asserts the teacher's weights inside


def test_training_lowers_the_loss_and_reports_metrics(tokenized, tmp_path):
    _, result = run_steps(tokenized, tmp_path, batch_size=8, accum=1, steps=12, lr=3e-3)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert losses[-1] < losses[0]
    assert set(result.metrics) == {"accuracy", "macro_f1"} and 0 <= result.metrics["accuracy"] <= 1


def test_loss_step_terms(tokenized):
    tok, data = tokenized
    batch = task.collator(tok)([data["train"][i] for i in range(6)])
    teacher, student = models()
    twin = copy_layers(teacher, [0, 1, 2, 3]).eval()

    # A student identical to its teacher: soft loss 0, total = (1 - alpha) * CE.
    terms = LossStep(task, LossConfig(alpha=0.3), teacher=teacher)(twin, batch)
    assert terms["soft"].abs().item() < 1e-5
    assert terms["items"].item() == 6
    ce = hard_ce(twin(**task.model_inputs(batch)).logits, batch["labels"])
    assert terms["loss"].item() == pytest.approx(0.7 * ce.item(), rel=1e-5)

    # No teacher (fine-tuning, baselines): plain summed CE.
    plain = LossStep(task)(student.eval(), batch)
    assert plain["loss"].item() == pytest.approx(
        hard_ce(student(**task.model_inputs(batch)).logits, batch["labels"]).item(), rel=1e-5
    )

    # The soft term has gradients for the student, none for the teacher.
    student.train()
    terms = LossStep(task, LossConfig(alpha=1.0), teacher=teacher)(student, batch)
    terms["loss"].backward()
    assert terms["soft"].item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_hidden_state_loss_with_projection(tokenized):
    tok, data = tokenized
    batch = task.collator(tok)([data["train"][i] for i in range(4)])
    teacher, _ = models()
    narrow = BertForSequenceClassification(
        tiny_bert_config(33, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    )
    projection = HiddenProjection({0: 1, 1: 3}, 16, 32)
    loss = LossConfig(alpha=0.0, hidden="mse", hidden_weight=2.0)
    terms = LossStep(task, loss, teacher=teacher, projection=projection)(narrow, batch)
    assert terms["hidden"].item() > 0
    assert terms["loss"].item() == pytest.approx(
        terms["hard"].item() + 2.0 * terms["hidden"].item(), rel=1e-5
    )
    terms["loss"].backward()
    assert projection.proj["0"].weight.grad is not None and projection.proj["0"].weight.grad.abs().sum() > 0
    # Same width and the same layers: the copied student matches the teacher's hidden states exactly.
    twin = copy_layers(teacher, [1, 3]).eval()
    same = LossStep(task, loss, teacher=teacher, projection=HiddenProjection({1: 3}, 32, 32))(twin, batch)
    assert same["hidden"].item() > 0  # layer 1 of the twin sees other inputs than teacher layer 3 ...
    full = copy_layers(teacher, [0, 1, 2, 3]).eval()
    exact = LossStep(task, loss, teacher=teacher, projection=HiddenProjection({0: 0, 3: 3}, 32, 32))(
        full, batch
    )
    assert exact["hidden"].abs().item() < 1e-8  # ... but a full copy matches layer for layer


def _lengths_data(n=203, seed=0):
    """Rows of 1-40 tokens in random order, as a tokenized data set (plus a shuffled selection)."""
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 41, (n,), generator=rng).tolist()
    ds = Dataset.from_dict({"input_ids": [[7] * k for k in lengths], "labels": [0] * n})
    return ds, lengths


def test_example_lengths_read_the_rows_in_the_data_sets_order():
    ds, lengths = _lengths_data()
    assert example_lengths(ds) == lengths
    picked = ds.select([5, 2, 9]).shuffle(seed=3)  # an indices mapping over the Arrow table
    assert example_lengths(picked) == [len(row["input_ids"]) for row in picked]
    pairs = Dataset.from_dict({"input_ids": [[1, 2], [3]], "labels": [[4, 5, 6], [7]]})  # translation
    assert example_lengths(pairs) == [5, 2]
    from datasets import Features, LargeList, Value

    large = Dataset.from_dict(
        {"input_ids": [[1, 2, 3], [4]]}, features=Features({"input_ids": LargeList(Value("int64"))})
    )
    assert example_lengths(large) == [3, 1]  # 64-bit offsets, as large corpora are stored


def test_length_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    ds, lengths = _lengths_data()
    sampler = LengthGroupedSampler(lengths, 8, seed=5, group=4)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))  # every example once
    assert list(LengthGroupedSampler(lengths, 8, seed=5, group=4)) == first  # the seed decides
    sampler.set_epoch(1)
    assert list(sampler) != first  # another order each epoch...
    sampler.set_epoch(0)
    assert list(sampler) == first  # ...and the same again for the same epoch
    full = len(first) // 8 * 8
    batches = [first[i : i + 8] for i in range(0, full, 8)]

    def padded(bs):  # tokens the collator pads to: each batch to its longest row
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(5)).tolist()
    random_batches = [shuffled[i : i + 8] for i in range(0, full, 8)]
    assert padded(batches) < 0.75 * padded(random_batches)
    # the batches within a group come in shuffled order, not longest first
    group_maxima = [max(lengths[i] for i in b) for b in batches[:4]]
    assert group_maxima != sorted(group_maxima, reverse=True)


def test_length_grouped_batches_through_accelerate_resume_and_shard_exactly():
    """The prepared loader: set_epoch reaches the sampler, skipping batches (a resume) lands in the
    same sequence, and two processes take alternate batches of that same sequence."""
    from accelerate.data_loader import prepare_data_loader

    ds, lengths = _lengths_data(n=120)

    def loader(processes=1, index=0):
        dl = make_dataloader(
            ds,
            4,
            lambda rows: [len(r["input_ids"]) for r in rows],
            shuffle=True,
            seed=3,
            group_by_length=True,
        )
        return prepare_data_loader(
            dl, num_processes=processes, process_index=index, put_on_device=False, use_seedable_sampler=True
        )

    def take(dl, n, skip=0):
        out, gen = [], endless(Accelerator(), dl, skip)
        for _ in range(n):
            out.append(next(gen))
        return out

    per_epoch = 120 // 4
    whole = take(loader(), per_epoch + 5)  # into the second epoch
    assert all(max(b) - min(b) <= 4 for b in whole[:per_epoch])  # similar lengths in each batch
    assert whole[per_epoch:] != whole[:5]  # the second epoch has its own order
    assert take(loader(), 10, skip=per_epoch - 5) == whole[per_epoch - 5 : per_epoch + 5]
    halves = [take(loader(2, i), per_epoch // 2) for i in range(2)]
    assert [b for pair in zip(*halves, strict=True) for b in pair] == whole[:per_epoch]
