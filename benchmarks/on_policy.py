"""What an on-policy batch costs: distill's step on the student's own samples over an off-policy step.

    python benchmarks/on_policy.py [--batch 8] [--prompt-len 32] [--new-tokens 32] [--vocab 32000] [--device cpu|cuda]

A Qwen2-style teacher (d 512, 8 layers) and a 2-layer student copied from it, random weights. Both
steps are distill's LossStep + backward + AdamW on the same prompts:

- off-policy: the batch's reference completions (``new-tokens`` tokens each);
- on-policy:  the student first samples completions of the prompts (up to ``new-tokens`` tokens,
              temperature 1, the KV cache on), then the same step on those (loss.on_policy = 1).

They alternate after warm-up; printed: the median step times and their ratio. A recipe with
``loss.on_policy: λ`` pays about ``1 + λ · (ratio − 1)`` times the off-policy step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from accelerate import Accelerator
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distill.config import LossConfig
    from distill.loop import LossStep, backward_step
    from distill.modeling import copy_layers, freeze
    from distill.tasks import causal_lm

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=1,
    )
    teacher = Qwen2ForCausalLM(config)
    student = copy_layers(teacher, [0, 7])
    teacher = freeze(teacher).to(args.device)
    accelerator = Accelerator(cpu=args.device == "cpu")
    student, optimizer = accelerator.prepare(student, torch.optim.AdamW(student.parameters(), lr=1e-5))
    student.train()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, args.vocab, (args.batch, args.prompt_len), generator=g)
    completion = torch.randint(2, args.vocab, (args.batch, args.new_tokens), generator=g)
    ids = torch.cat([prompt, completion], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, args.prompt_len - 1 : -1] = completion
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "prompt_ids": prompt,
        "prompt_mask": torch.ones_like(prompt),
        "row": torch.arange(args.batch),  # on-policy samples are seeded per training example
    }
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    steps = {
        name: LossStep(
            causal_lm,
            LossConfig(alpha=0.5, temperature=1.0, soft="jsd", on_policy=fraction),
            teacher=teacher,
            max_new_tokens=args.new_tokens,
        )
        for name, fraction in (("off-policy", 0.0), ("on-policy", 1.0))
    }

    def step(name: str) -> float:
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        backward_step(accelerator, student, steps[name], [batch])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name in steps:
        step(name)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.repeats):
        for name in list(steps)[i % 2 :] + list(steps)[: i % 2]:
            times[name].append(step(name))
    off, on = (statistics.median(times[n]) * 1000 for n in ("off-policy", "on-policy"))
    print(
        f"device {accelerator.device}, batch {args.batch}, prompt {args.prompt_len} + {args.new_tokens} new tokens, "
        f"vocabulary {args.vocab}, teacher 8 layers d512 (Qwen2-style), student 2, threads {torch.get_num_threads()}"
    )
    print(f"off-policy step: {off:.0f} ms")
    print(f"on-policy step (sampling + step): {on:.0f} ms")
    print(f"ratio on-policy / off-policy step: {on / off:.2f}")


if __name__ == "__main__":
    main()
