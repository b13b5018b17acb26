"""A teacher store at language-model scale: bytes per token, the streaming reader's memory and speed,
and what the compact format gives up.

    python benchmarks/store_scale.py [--tokens 200000] [--seq 128] [--exact-store DIR ...] [--dir DIR]

A Qwen-style tiny teacher (Qwen2, 151,936 output rows as Qwen2.5's, 2 layers of width 32, random
weights) runs over random token sequences through distill's own store code
(``teacher_store.build``, the path ``teacher.cache: true`` takes):

1. **bytes per token**: stores of 2,048 tokens at k = 32 and k = 128, exact and compact
   (``teacher.cache_format``, 6-bit log-probabilities), the store's own count of its bytes;
2. **the streaming reader**: a compact k = 128 store of ``--tokens`` tokens read once through
   ``TeacherStore.batch`` in a shuffled order of batches, as the student stage reads it, in a fresh
   process. Its memory: anonymous memory (what the process holds: ``RssAnon``) sampled after every
   batch, peak minus the level after the first batch (libraries paged in, allocator pools made),
   plus the store's index (it grows with the rows), over the store's size on disk. Pages
   of the memory-mapped shards that the reads touch are the OS's page cache (``RssFile``: shared,
   dropped under memory pressure, not the process's); printed beside it;
3. **read throughput**: target tokens per second of those reads, beside what a student step needs
   (a 1-layer student of the same vocabulary, forward + sparse KL + backward + AdamW over a batch
   of the same shape), both on one thread;
4. **distortion**: the mean per-token KL from the exact to the compact top-k + tail distribution,
   at 4 to 8 bits and for bf16 log-probabilities, over the Qwen-style store (random weights: flat
   outputs, most mass in the tail) and over every ``--exact-store`` given (a store a real run
   wrote with ``teacher.cache_format: exact``, e.g. ``distill run num2words_en_fr
   teacher.cache=true teacher.cache_top_k=128``: a trained teacher's outputs).

Two lines read exactly ``compressed k=128: N bytes/token`` and
``reader peak memory growth / store size: R`` (targets: N <= 300, R <= 0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VOCABULARY = 151_936


def qwen(layers: int, seed: int):
    """A Qwen2-style tiny model with Qwen2.5's output rows (width 32, random weights)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCABULARY,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config)


def build(folder: Path, tokens: int, seq: int, k: int, bits: int, batch: int = 8):
    from accelerate import Accelerator
    from datasets import Dataset

    from distill import teacher_store

    g = torch.Generator().manual_seed(1)
    rows = max(1, tokens // seq)
    ids = torch.randint(0, VOCABULARY - 300, (rows, seq), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})

    def collate(examples):
        return {k: torch.tensor([e[k] for e in examples]) for k in ("input_ids", "labels")}

    def model_inputs(b):
        return {"input_ids": b["input_ids"]}

    settings = {"benchmark": "store_scale", "k": k, "bits": bits, "seq": seq}
    return teacher_store.build(
        Accelerator(cpu=True),
        qwen(layers=2, seed=0).eval(),
        data,
        collate,
        model_inputs,
        folder,
        settings=settings,
        top_k=k,
        temperature=1.0,
        batch_size=batch,
        chunk=64,
        bits=bits,
    )


def status() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def read_all(folder: str, seq: int, batch: int) -> None:
    """(In a fresh process.) Read the whole store once, batch by batch in a shuffled order."""
    torch.set_num_threads(1)
    from distill.teacher_store import TeacherStore

    store = TeacherStore(Path(folder), top_k=True)
    index = sum(t.numel() * t.element_size() for t in vars(store).values() if isinstance(t, torch.Tensor))
    rows = len(store.shard)
    labels = torch.zeros(batch, seq, dtype=torch.long)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
    store.batch(order[:batch], labels)  # the first batch: libraries paged in, allocator pools made
    before = status()
    peak = {"RssAnon": 0, "RssFile": 0}
    start = time.perf_counter()
    tokens = 0
    for i in range(batch, rows - batch + 1, batch):
        got = store.batch(order[i : i + batch], labels)
        tokens += got.ids.shape[0] * got.ids.shape[1]
        now = status()
        peak = {k: max(peak[k], now[k] - before[k]) for k in peak}
    seconds = time.perf_counter() - start
    print(json.dumps({"bytes": store.bytes, "index": index, "tokens": tokens, "seconds": seconds, **peak}))


def student_step_seconds(seq: int, batch: int, k: int, steps: int = 4) -> float:
    from distill.losses import sparse_soft_kl, top_k_of

    student = qwen(layers=1, seed=2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, VOCABULARY, (batch, seq))
    teacher = top_k_of(torch.randn(batch, seq, VOCABULARY), k, 1.0)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = student(input_ids=ids).logits
        sparse_soft_kl(logits, teacher, temperature=1.0).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def distortion(folder: Path, bits_list=(4, 5, 6, 8)) -> list[str]:
    """Mean per-token KL(exact || compact) over every token of an exact store, re-encoded."""
    from safetensors.torch import load_file

    from distill import store_codec

    record = json.loads((folder / "complete.json").read_text())
    sums = {b: [0.0, 0.0, 0.0] for b in (*bits_list, "bf16")}  # KL sum, KL max, bound sum
    count, k = 0, None
    for name in record["shards"]:
        shard = load_file(str(folder / name))
        logprobs, ids, tail = shard["logprobs"].float(), shard["ids"].long(), shard["tail"].float()
        if not len(tail):
            continue
        k = ids.shape[-1]
        universe = int(ids.max()) + 1  # the ids are kept exactly: any universe that holds them
        order = ids.argsort(-1)
        exact = torch.cat([logprobs.gather(-1, order), tail.clamp(min=-1e4).unsqueeze(-1)], -1)
        for b in sums:
            if b == "bf16":
                q = torch.cat(
                    [
                        logprobs.bfloat16().float().gather(-1, order),
                        tail.bfloat16().float().clamp(min=-1e4).unsqueeze(-1),
                    ],
                    -1,
                )
                q = q - q.logsumexp(-1, keepdim=True)
                bound = torch.zeros(len(tail))
            else:
                parts = store_codec.encode(logprobs, ids, tail, universe, b)
                lp, _, t = store_codec.decode(parts, k, universe, b)
                q = torch.cat([lp, t.clamp(min=-1e4).unsqueeze(-1)], -1)
                bound = (parts["step"].float().exp() - 1) ** 2
            kl = (exact.exp() * (exact - q)).sum(-1).clamp(min=0)
            sums[b][0] += float(kl.sum())
            sums[b][1] = max(sums[b][1], float(kl.max()))
            sums[b][2] += float(bound.sum())
        count += len(tail)
    lines = []
    for b, (total, largest, bound) in sums.items():
        what = "bf16 log-probabilities" if b == "bf16" else f"compact, {b}-bit"
        extra = "" if b == "bf16" else f", bound's mean {bound / count:.2e}"
        lines.append(f"  {what}: mean KL {total / count:.2e} nats/token, max {largest:.2e}{extra}")
    return [f"{folder} ({count} tokens, k = {k}):", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="rows per batch the reader is asked for")
    parser.add_argument("--exact-store", type=Path, action="append", default=[])
    parser.add_argument("--dir", type=Path, help="keep the stores here (a later run reads them back)")
    parser.add_argument("--read", nargs=3, help=argparse.SUPPRESS)  # the reader's own process
    args = parser.parse_args()
    if args.read:
        read_all(args.read[0], int(args.read[1]), int(args.read[2]))
        return
    torch.set_num_threads(os.cpu_count() or 1)  # the teacher's pass; reads and the student step: 1
    from distill import store_codec

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        sizes = {}
        for k in (32, 128):
            for fmt, bits in (("exact", 0), ("compact", 6)):
                store = build(root / f"{fmt}{k}", 2048, args.seq, k, bits)
                sizes[fmt, k] = store.bytes / store.tokens
        exact_small = root / "exact128"
        start = time.perf_counter()
        big = build(root / "big", args.tokens, args.seq, 128, 6)
        build_seconds = time.perf_counter() - start
        proc = subprocess.run(
            [sys.executable, __file__, "--read", str(root / "big"), str(args.seq), str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        read = json.loads(proc.stdout.strip().splitlines()[-1])
        torch.set_num_threads(1)
        step = student_step_seconds(args.seq, args.batch, 128)
        print(
            f"\nstore of a Qwen-style teacher, vocabulary {VOCABULARY:,}, random token sequences of {args.seq}:"
        )
        for k in (32, 128):
            print(
                f"  k={k}: exact {sizes['exact', k]:.0f} bytes/token, compact (6-bit) {sizes['compact', k]:.0f} bytes/token"
            )
        print(f"compressed k=128: {sizes['compact', 128]:.0f} bytes/token")
        print(
            f"  (formula: {store_codec.bytes_per_token(VOCABULARY, 128, 6)}; 5-bit {store_codec.bytes_per_token(VOCABULARY, 128, 5)}, 4-bit {store_codec.bytes_per_token(VOCABULARY, 128, 4)})"
        )
        print(
            f"\nstreaming reader: a compact k=128 store of {big.tokens:,} tokens, {big.bytes / 2**20:.1f} MiB "
            f"(built in {build_seconds:.0f} s), read once in shuffled batches of {args.batch} x {args.seq}"
        )
        growth = read["RssAnon"] + read["index"]
        print(
            f"  anonymous memory growth after the first batch, peak: {read['RssAnon'] / 2**20:.2f} MiB, "
            f"+ the index {read['index'] / 2**20:.2f} MiB"
        )
        print(f"  mapped shard pages resident (page cache), peak: {read['RssFile'] / 2**20:.1f} MiB")
        print(f"reader peak memory growth / store size: {growth / read['bytes']:.3f}")
        rate = read["tokens"] / read["seconds"]
        need = args.batch * args.seq / step
        print(
            f"read throughput: {rate:,.0f} tokens/s; a student step ({step * 1000:.0f} ms for "
            f"{args.batch * args.seq} tokens) needs {need:,.0f} tokens/s: reads are {rate / need:.0f}x faster"
        )
        print("\ndistortion, exact -> compact (mean per-token KL over the k + 1 buckets):")
        for folder in [exact_small, *args.exact_store]:
            for line in distortion(folder):
                print(line)


if __name__ == "__main__":
    main()
