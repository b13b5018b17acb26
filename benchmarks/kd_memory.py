"""Peak memory and time of a word-level KD step over a student-only cross-entropy step, Marian-size vocabulary.

    python benchmarks/kd_memory.py [--batch 16] [--src-len 32] [--tgt-len 32] [--vocab 58101] [--device cpu|cuda]
                                   [--teacher-dtype float32|bfloat16]

Teacher: a Marian model of opus-mt size (d_model 512, 6 + 6 layers, 58,101-word vocabulary, random
weights: memory and time do not depend on their values). Student: its encoder and 1 decoder layer.
Both models are resident in every measurement, so the ratios compare the steps, not the weights.

- ce:        student only: forward with labels (the model's own loss), backward, AdamW step
- kd:        distill's step: LossStep (0.5 KL at T=2, chunked over loss.chunk_tokens tokens + 0.5 CE), backward, AdamW
- kd_whole:  the same with the KL computed over all tokens at once (loss.chunk_tokens=0)
- kd_topk:   the student reading top-32 soft labels from a store (teacher.cache: true), chunked

With --decoder-only, the pair is a Qwen2-style teacher (d 512, 8 layers) and a 2-layer student
copied from it, on prompt + completion sequences (python benchmarks/kd_memory.py --decoder-only
--vocab 151936 --batch 4 --src-len 64 --tgt-len 64).

The kd step takes the teacher's logits chunk by chunk from its last hidden states and output head
(losses.TeacherHead), so no [tokens, vocabulary] teacher logits exist either.

On CPU each variant runs in a fresh process and its peak resident memory during the step is read
from /proc (VmHWM, reset before the step); on CUDA, torch's peak allocated memory. "working" is the
peak minus the memory held just before the step (models, optimizer state after a warm-up step).
Target: kd peak / ce peak <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    from accelerate import Accelerator
    from transformers import MarianConfig, MarianMTModel

    from distill.config import LossConfig
    from distill.loop import backward_step
    from distill.modeling import copy_encoder_decoder_layers, freeze
    from distill.tasks import translation

    torch.manual_seed(0)
    if args.decoder_only:
        return measure_decoder_only(variant, args)
    config = MarianConfig(
        vocab_size=args.vocab,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        pad_token_id=args.vocab - 1,
        decoder_start_token_id=args.vocab - 1,
        eos_token_id=0,
        max_position_embeddings=512,
    )
    teacher = MarianMTModel(config)
    student = copy_encoder_decoder_layers(teacher, list(range(6)), [0])
    teacher = freeze(teacher, args.teacher_dtype)
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device
    teacher.to(device)
    student, optimizer = accelerator.prepare(student, torch.optim.AdamW(student.parameters(), lr=1e-5))
    student.train()
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1, args.vocab - 1, (args.batch, args.src_len), generator=g),
        "attention_mask": torch.ones(args.batch, args.src_len, dtype=torch.long),
        "labels": torch.randint(1, args.vocab - 1, (args.batch, args.tgt_len), generator=g),
    }
    batch["decoder_input_ids"] = torch.cat(
        [torch.full((args.batch, 1), args.vocab - 1), batch["labels"][:, :-1]], dim=1
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    chunk = 0 if variant == "kd_whole" else args.chunk
    loss = LossConfig(alpha=0.5, temperature=2.0, chunk_tokens=chunk)
    loss_step = _loss_step(variant, translation, loss, teacher, batch, args.batch, device)

    def step() -> None:
        if variant == "ce":
            accelerator.backward(student(**translation.model_inputs(batch), labels=batch["labels"]).loss)
        else:
            backward_step(accelerator, student, loss_step, [batch])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _peak(step, args, device)


def _loss_step(variant, task, loss, teacher, batch, batch_size, device):  # noqa: ANN001, ANN202
    """LossStep of a variant: the teacher online, or (kd_topk) top-32 soft labels as a store gives
    them for this batch (``batch`` gets the row ids a store reads by)."""
    from distill.loop import LossStep
    from distill.losses import top_k_of

    if variant != "kd_topk":
        return LossStep(task, loss, teacher=teacher)
    with torch.inference_mode():
        top = top_k_of(teacher(**task.model_inputs(batch)).logits, 32, loss.temperature)
    top.logprobs, top.ids, top.tail = top.logprobs.clone(), top.ids.to(torch.int32), top.tail.clone()

    class Stored:  # what TeacherStore.batch gives for this batch
        def batch(self, rows: torch.Tensor, labels: torch.Tensor):  # noqa: ANN202
            return top

    batch["row"] = torch.arange(batch_size, device=device)
    return LossStep(task, loss, store=Stored())


def measure_decoder_only(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """The same steps for a decoder-only pair: a Qwen2-style teacher (d 512, 8 layers, vocabulary
    ``--vocab``) and a 2-layer student copied from it, on ``batch`` sequences of ``src-len`` prompt
    + ``tgt-len`` completion tokens (the loss on the completion)."""
    from accelerate import Accelerator
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from distill.config import LossConfig
    from distill.loop import backward_step
    from distill.modeling import copy_layers, freeze
    from distill.tasks import causal_lm

    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    teacher = Qwen2ForCausalLM(config)
    student = copy_layers(teacher, [0, 7])
    teacher = freeze(teacher, args.teacher_dtype)
    accelerator = Accelerator(cpu=args.device == "cpu")
    device = accelerator.device
    teacher.to(device)
    student, optimizer = accelerator.prepare(student, torch.optim.AdamW(student.parameters(), lr=1e-5))
    student.train()
    g = torch.Generator().manual_seed(1)
    length = args.src_len + args.tgt_len
    ids = torch.randint(2, args.vocab, (args.batch, length), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, args.src_len - 1 : -1] = ids[:, args.src_len :]  # position t gives token t + 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = {k: v.to(device) for k, v in batch.items()}
    chunk = 0 if variant == "kd_whole" else args.chunk
    loss = LossConfig(alpha=0.5, temperature=2.0, chunk_tokens=chunk)
    loss_step = _loss_step(variant, causal_lm, loss, teacher, batch, args.batch, device)

    def step() -> None:
        if variant == "ce":
            out = student(**causal_lm.model_inputs(batch))
            from distill.losses import hard_ce

            accelerator.backward(hard_ce(out.logits, batch["labels"]) / (batch["labels"] != -100).sum())
        else:
            backward_step(accelerator, student, loss_step, [batch])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _peak(step, args, device)


def _peak(step, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    step()  # warm-up: optimizer state exists from here on, as in training
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        before = rss_kb("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        step()
        peak = rss_kb("VmHWM") * 1024
    return {
        "peak_mb": peak / 2**20,
        "working_mb": (peak - before) / 2**20,
        "step_s": statistics.median(times),
    }


def main() -> None:
    from distill.config import LossConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--tgt-len", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=58101)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=LossConfig.chunk_tokens, help="loss.chunk_tokens")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--decoder-only", action="store_true", help="a Qwen2-style pair (use --vocab 151936)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args)))
        return

    results = {}
    for variant in ("ce", "kd", "kd_whole", "kd_topk"):
        if args.device == "cuda":
            torch.cuda.empty_cache()
            results[variant] = measure(variant, args)
        else:  # a fresh process each: a peak of resident memory cannot be reset across allocations already freed
            flags = [
                f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k != "variant" and v is not False
            ]
            cmd = [sys.executable, __file__, "--variant", variant, *flags]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
    pair = (
        "teacher 8 layers d512 (Qwen2-style), student 2"
        if args.decoder_only
        else "teacher 6+6 layers d512, student 6+1"
    )
    what = "prompt" if args.decoder_only else "source"
    print(
        f"device {args.device}, batch {args.batch}, {what} {args.src_len} / target {args.tgt_len} tokens, "
        f"vocabulary {args.vocab}, {pair} ({args.teacher_dtype})"
    )
    print(f"{'step':<10}{'peak MB':>10}{'working MB':>12}{'time s':>9}")
    for variant, r in results.items():
        print(f"{variant:<10}{r['peak_mb']:>10.0f}{r['working_mb']:>12.0f}{r['step_s']:>9.3f}")
    ce, kd, whole = results["ce"], results["kd"], results["kd_whole"]
    print(f"peak memory kd / ce: {kd['peak_mb'] / ce['peak_mb']:.3f}  (target <= 1.15)")
    print(
        f"peak memory kd_topk / ce: {results['kd_topk']['peak_mb'] / ce['peak_mb']:.3f}  (top-32 from a store)"
    )
    print(f"working memory kd / ce: {kd['working_mb'] / ce['working_mb']:.3f}")
    print(
        f"peak memory kd_whole / ce: {whole['peak_mb'] / ce['peak_mb']:.3f}  (the KL over all tokens at once)"
    )
    print(f"step time kd / ce: {kd['step_s'] / ce['step_s']:.3f}")


if __name__ == "__main__":
    main()
