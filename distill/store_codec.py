"""The compact format of a teacher store's top-k entries (``teacher.cache_format: compact``).

Each target token's k kept entries are stored in a fixed number of bytes, so a token is found by
its index alone (no per-token offsets) and a batch is decoded with a few vectorised numpy calls:

- **ids**, sorted ascending, in Elias-Fano form: the low ``L = floor(log2(V / k))`` bits of each
  id bit-packed, the high bits as a unary bit vector of ``k + (V - 1 >> L) + 1`` bits. That is
  about ``2 + log2(V / k)`` bits per id instead of 32 (k = 128 over Qwen's 151,936 ids: 195 bytes
  instead of 512). The order of the ids carries no information (the losses gather by id), so
  sorting them costs nothing.
- **log-probabilities**, in the same order, as ``bits``-bit codes of their distance below the
  token's largest one, on a uniform grid whose step (float16, rounded up) spans the token's range.
- **the split of the mass** between the k entries and the tail (the rest of the vocabulary), as
  one float32: the log of the smaller of the two, negative for the k and positive (negated) for
  the tail, so that each side is recovered to float32 precision however small it is (the other is
  ``log(1 - exp(·))`` of it).

Decoding renormalises the k entries to hold their exact mass. Each entry's log error is then at
most one step (half a step of rounding, half of the renormalisation; entries more than ``RANGE``
nats below the top, -inf included, are coded at ``RANGE`` below it), so the per-token KL
from the exact to the decoded distribution over the k + 1 buckets is at most
``(exp(step) - 1)**2`` (KL ≤ χ²); what it is on real teachers is measured by
``benchmarks/store_scale.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distill.losses import TAIL_FLOOR

FORMAT = "compact-1"
RANGE = 60.0  # entries more than this many nats below the token's top are coded at the range's end


def id_bits(vocabulary: int, k: int) -> int:
    """Elias-Fano's low bits per id for k ids out of ``vocabulary``."""
    return max(0, (vocabulary // k).bit_length() - 1)


def bytes_per_token(vocabulary: int, k: int, bits: int) -> int:
    """What one target token costs in the compact format (ids, codes, step and mass)."""
    low = id_bits(vocabulary, k)
    high = k + ((vocabulary - 1) >> low) + 1
    return math.ceil(k * low / 8) + math.ceil(high / 8) + math.ceil(k * bits / 8) + 2 + 4


def pack(values: np.ndarray, width: int) -> np.ndarray:
    """``[n, m]`` non-negative integers below ``2**width`` (at most 32) as
    ``[n, ceil(m * width / 8)]`` bytes, the bits of each value in turn, least significant first."""
    n, m = values.shape
    if width == 0:
        return np.zeros((n, 0), dtype=np.uint8)
    as_bytes = values.astype("<u4").view(np.uint8).reshape(n, m, 4)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :width]  # uint8: 32 per value
    return np.packbits(bits.reshape(n, m * width), axis=1, bitorder="little")


def unpack(packed: np.ndarray, m: int, width: int) -> np.ndarray:
    """The inverse of :func:`pack` (``width`` at most 25): ``[n, m]`` int64, each value read from
    the four bytes that hold it (a few bytes per value of working memory, no bit arrays)."""
    n = packed.shape[0]
    if width == 0:
        return np.zeros((n, m), dtype=np.int64)
    if width > 25:
        raise ValueError(f"at most 25 bits per value, not {width}")
    padded = np.zeros((n, packed.shape[1] + 4), dtype=np.uint32)
    padded[:, : packed.shape[1]] = packed
    offset = np.arange(m, dtype=np.int64) * width
    first, shift = offset >> 3, (offset & 7).astype(np.uint32)
    window = (
        padded[:, first] | padded[:, first + 1] << 8 | padded[:, first + 2] << 16 | padded[:, first + 3] << 24
    )
    return ((window >> shift) & np.uint32((1 << width) - 1)).astype(np.int64)


def encode_ids(ids: np.ndarray, vocabulary: int) -> np.ndarray:
    """``[n, k]`` distinct ids in ascending order per row, Elias-Fano coded: ``[n, bytes]`` uint8."""
    n, k = ids.shape
    low_bits = id_bits(vocabulary, k)
    high_len = k + ((vocabulary - 1) >> low_bits) + 1
    high = np.zeros((n, high_len), dtype=np.uint8)
    np.put_along_axis(high, (ids >> low_bits) + np.arange(k), 1, axis=1)
    low = pack(ids & ((1 << low_bits) - 1), low_bits)
    return np.concatenate([low, np.packbits(high, axis=1, bitorder="little")], axis=1)


def decode_ids(packed: np.ndarray, k: int, vocabulary: int) -> np.ndarray:
    """The inverse of :func:`encode_ids`: ``[n, k]`` int64 ids, ascending."""
    n = packed.shape[0]
    low_bits = id_bits(vocabulary, k)
    low_bytes = math.ceil(k * low_bits / 8)
    high_len = k + ((vocabulary - 1) >> low_bits) + 1
    high = np.unpackbits(packed[:, low_bytes:], axis=1, count=high_len, bitorder="little")
    ones = np.nonzero(high)[1].reshape(n, k)  # row by row, k set bits in each
    return ((ones - np.arange(k)) << low_bits) | unpack(packed[:, :low_bytes], k, low_bits)


def encode(logprobs: torch.Tensor, ids: torch.Tensor, tail: torch.Tensor, vocabulary: int, bits: int):
    """One batch of tokens' top-k entries (``[n, k]``, any order) in the compact format: a dict of
    ``ids`` and ``codes`` (uint8 rows), ``step`` (float16) and ``mass`` (float32)."""
    order = ids.argsort(dim=-1)
    ids = ids.gather(-1, order).long()
    logprobs = logprobs.float().gather(-1, order)
    top = logprobs.max(dim=-1, keepdim=True).values
    below = (top - logprobs).nan_to_num(posinf=RANGE).clamp(max=RANGE)  # -inf entries at the end
    levels = (1 << bits) - 1
    step = (below.max(dim=-1).values / levels * (1 + 2**-10)).half()  # rounded up: codes fit
    scale = step.float().unsqueeze(-1)
    kept = torch.logsumexp(logprobs, dim=-1)
    tail = tail.float().clamp(min=TAIL_FLOOR)
    mass = torch.where(kept <= tail, kept, -tail)  # the log of the smaller side, signed by which
    codes = torch.where(scale > 0, (below / scale.clamp(min=1e-30)).round(), 0.0).clamp(0, levels)
    return {
        "ids": torch.from_numpy(encode_ids(ids.cpu().numpy(), vocabulary)),
        "codes": torch.from_numpy(pack(codes.long().cpu().numpy(), bits)),
        "step": step.cpu(),
        "mass": mass.cpu(),
    }


def split(mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log mass of the k entries, log mass of the tail)`` from the stored ``mass``."""
    small = -mass.abs()
    other = torch.log(-torch.expm1(small)).clamp(min=TAIL_FLOOR)  # log(1 - exp(small))
    return torch.where(mass < 0, small, other), torch.where(mass < 0, other, small)


def decode(parts: dict[str, torch.Tensor], k: int, vocabulary: int, bits: int, chunk: int = 256):
    """The inverse of :func:`encode`: ``(logprobs [n, k] float32, ids [n, k] int32, tail [n])``,
    the ids ascending and the k probabilities renormalised to their stored mass. Decoded
    ``chunk`` tokens at a time, so the working memory beside the result stays small."""
    n = len(parts["mass"])
    logprobs, ids, tails = torch.empty(n, k), torch.empty(n, k, dtype=torch.int32), torch.empty(n)
    coded_ids, codes, steps, masses = (parts[name] for name in ("ids", "codes", "step", "mass"))
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        ids[a:b] = torch.from_numpy(decode_ids(coded_ids[a:b].numpy(), k, vocabulary))
        kept, tails[a:b] = split(masses[a:b].float())
        relative = torch.from_numpy(unpack(codes[a:b].numpy(), k, bits)).float()
        relative.mul_(steps[a:b].float().unsqueeze(-1)).neg_()
        logprobs[a:b] = relative - torch.logsumexp(relative, dim=-1, keepdim=True) + kept.unsqueeze(-1)
    return logprobs, ids, tails
