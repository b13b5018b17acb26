"""Length-grouped batches against shuffled ones: padding and training-step time, side by side.

    python benchmarks/batch_order.py RECIPE [key=value ...] [--steps 40] [--block 5]

Takes the recipe's training split, tokenizer, teacher and student (as `distill run` builds them,
the teacher as the recipe names it: a teacher that the run would fine-tune first gets its fresh
head, which costs the same time) and trains copies of the same student with the loop's own
distillation step on batches of `train.batch_size` in two orders:

- shuffled: the default, a seeded shuffle (padded per batch to its longest example);
- grouped:  `train.group_by_length=true` (`distill.loop.LengthGroupedSampler`).

It prints the share of padded positions over one epoch of each order (exact, no timing) and the
median time of a training step, the two orders alternating in blocks of `--block` steps on the
same threads, so that the machine's noise falls on both. Speed-up = shuffled / grouped.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from accelerate import Accelerator

from distill.batches import example_lengths, make_dataloader
from distill.cli import find_recipe
from distill.config import load_recipe
from distill.loop import LossStep, backward_step, optimizer_step
from distill.modeling import build_student, freeze
from distill.plan import prepare
from distill.stages import quiet_libraries


def padded_share(lengths: list[int], loader) -> float:
    real = padded = 0
    for batch in loader.batch_sampler:
        longest = max(lengths[i] for i in batch)
        real += sum(lengths[i] for i in batch)
        padded += longest * len(batch)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per order")
    parser.add_argument("--block", type=int, default=5, help="steps of one order before switching")
    args = parser.parse_args()

    quiet_libraries()
    cfg = load_recipe(find_recipe(args.recipe), args.overrides + ["output.dir=/tmp/distill-batch-order"])
    plan = prepare(cfg)
    task, tok = plan.task, plan.tokenizer
    train = task.tokenize(plan.splits, tok, cfg.data)["train"]
    collate = task.collator(tok, plan.teacher.config)
    teacher = freeze(plan.teacher)
    student, _ = build_student(cfg.student, teacher, task.MODEL_CLASS, task.model_kwargs(plan.label_names))
    lengths = example_lengths(train)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    teacher.to(accelerator.device)
    step = LossStep(task, cfg.loss, teacher=teacher)

    orders = {}
    for name, grouped in (("shuffled", False), ("grouped", True)):
        loader = make_dataloader(
            train, cfg.train.batch_size, collate, shuffle=True, seed=cfg.train.seed, group_by_length=grouped
        )
        model = copy.deepcopy(student).to(accelerator.device).train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.train.learning_rate, fused=True
        )  # as the loop
        orders[name] = {
            "share": padded_share(lengths, loader),
            "batches": iter(loader),
            "model": model,
            "optimizer": optimizer,
            "times": [],
        }

    def one_step(o):
        batch = {k: v.to(accelerator.device) for k, v in next(o["batches"]).items()}
        start = time.perf_counter()
        backward_step(accelerator, o["model"], step, [batch])
        optimizer_step(
            accelerator,
            o["optimizer"],
            list(o["model"].parameters()),
            max_grad_norm=1.0,
            loss=torch.zeros(()),
            first_bad=torch.zeros((), dtype=torch.long),
            step=1,
        )
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for o in orders.values():  # warm-up
        for _ in range(2):
            one_step(o)
    done = 0
    while done < args.steps:
        for o in orders.values():
            o["times"] += [one_step(o) for _ in range(args.block)]
        done += args.block

    print(
        f"recipe {args.recipe}: {len(train)} training examples, batch {cfg.train.batch_size}, "
        f"{torch.get_num_threads()} threads, device {accelerator.device}"
    )
    print("order     padded positions   median step")
    for name, o in orders.items():
        print(f"{name:9} {o['share']:16.1%}   {statistics.median(o['times']) * 1000:8.1f} ms")
    ratio = statistics.median(orders["shuffled"]["times"]) / statistics.median(orders["grouped"]["times"])
    print(f"speed-up of a training step, grouped over shuffled: {ratio:.2f}x")


if __name__ == "__main__":
    main()
