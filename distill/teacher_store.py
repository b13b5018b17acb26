"""The teacher's outputs as a stored artefact: computed once, read by every student stage after.

With ``teacher.cache: true`` the teacher runs over the student's training split once, before the
student stage, and writes what the soft loss needs into ``OUTPUT/teacher_outputs/`` (or
``teacher.cache_dir``, to share one store between the runs of a sweep):

- classification: the full logits, ``[examples, labels]`` (a few numbers per example);
- translation (every token-level task): for each real target token, the log-probabilities at
  ``loss.temperature`` of the teacher's ``teacher.cache_top_k`` most likely tokens, their ids, and
  the log of the probability left over (the tail), which the sparse losses keep as a bucket of its
  own (:mod:`distill.losses`). ``teacher.cache_format: exact`` keeps them as float32 and int32 (8
  bytes per entry); ``compact`` in a fixed number of bytes per token, the ids Elias-Fano coded and
  the log-probabilities quantized to ``teacher.cache_bits`` bits (:mod:`distill.store_codec`).

Format: safetensors shards, one per ``chunk`` examples. Safetensors rather than Arrow because the
store is a handful of dense tensors per shard (tokens are flattened, with per-example offsets):
a shard is memory-mapped and read row by row as the student's batches ask (no copies, no
pickling, memory that does not grow with the store), and is one file whose SHA-256 is recorded
beside it.

The store is keyed by a fingerprint of the teacher's weights (as it runs: after the cast to
``teacher.dtype``), the tokenized training data and the settings that change the outputs; a store
made otherwise is refused in one line, never silently reused. Shards are written atomically, each
followed by its record (size and SHA-256): a killed build continues with the missing or damaged
shards. Under ``accelerate launch``/``torchrun`` each process computes and writes its own shards
(shard i by process i mod N); the first process writes ``complete.json`` last, after all are
written. A student stage that finds a complete store does not run the teacher.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from distill import atomic, store_codec
from distill.errors import DistillError
from distill.losses import TopK, top_k_of
from distill.modeling import place, state_tensors

log = logging.getLogger(__name__)

ROW = "row"  # the column of the student's training split that indexes the store
COMPLETE = "complete.json"
SETTINGS = "settings.json"  # written first: what the shards in the folder are made with
OPEN_SHARDS = 8  # shard files a reader keeps open at once
TOKEN_CHUNK = 4096  # target tokens turned into top-k at a time (bounds the float32 log-softmax)


def fingerprint(teacher: torch.nn.Module, dataset: Dataset, settings: dict[str, Any]) -> dict[str, Any]:
    """What decides the stored outputs: the settings, and SHA-256 digests of the teacher's weights
    (each tensor's bytes and dtype, in ``state_dict`` order) and of the tokenized data."""
    weights = hashlib.sha256()
    for name, tensor in state_tensors(teacher):  # offloaded weights read in as they are visited
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    data = hashlib.sha256()
    columns = [
        c for c in ("input_ids", "attention_mask", "token_type_ids", "labels") if c in dataset.column_names
    ]
    for column in columns:
        data.update(column.encode())
        for batch in dataset.select_columns([column]).with_format("numpy").iter(batch_size=4096):
            for value in batch[column]:
                data.update(np.asarray(value, dtype=np.int64).tobytes() + b"|")
    return {
        **settings,
        "examples": len(dataset),
        "teacher_weights": weights.hexdigest(),
        "data": data.hexdigest(),
    }


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse a store folder whose recorded settings differ from ``settings`` (validate's part of
    the check; the teacher's weights and the data are compared when the run builds the store)."""
    recorded = atomic.read_json(folder / SETTINGS)
    if not isinstance(recorded, dict) or atomic.read_json(folder / COMPLETE) is None:
        return  # an unfinished store of other settings is removed by the run, not reused
    current = atomic.strict(settings)
    # the weights and data digests are the run's to compare; a format key is absent when exact
    keys = set(current) | {k for k in recorded if k.startswith("teacher.cache_")}
    changed = sorted(k for k in keys if recorded.get(k) != current.get(k))
    if changed:
        raise DistillError(
            f"{folder} holds teacher outputs made with other settings ({', '.join(changed)} changed); "
            "delete it or set teacher.cache_dir to another folder"
        )


class TeacherStore:
    """A complete store, read from its shards as the batches ask for them: each shard is a
    memory-mapped safetensors file, so what stays in memory is the index (where each row's
    outputs are: 16 to 32 bytes per row), whatever the store's size, and each process reads only the
    rows of its own batches. :meth:`batch` gives a batch's teacher outputs."""

    def __init__(self, folder: Path, top_k: bool):
        self.folder = folder
        self.top_k = top_k
        record = atomic.read_json(folder / COMPLETE) or {}
        self.format = record.get("teacher.cache_format", "exact")  # stores before compact: exact
        if self.format not in ("exact", store_codec.FORMAT):
            raise DistillError(
                f"{folder}: teacher outputs in format '{self.format}', which this version of distill does "
                f"not read (it reads exact and {store_codec.FORMAT}); delete the folder to compute them again"
            )
        self.layout: tuple[int, int, int] | None = None  # compact: (k, bits, vocabulary)
        self.paths = [folder / name for name in record.get("shards", [])]
        self._open: dict[int, Any] = {}  # shard -> its safe_open handle, opened on first use
        rows, shard, local, starts, lengths = [], [], [], [], []
        self.bytes = 0
        names = self._names() if top_k else ("logits",)
        for i, path in enumerate(self.paths):
            with safe_open(str(path), framework="pt") as f:
                if self.format != "exact":
                    layout = tuple(f.get_tensor("layout").tolist())
                    if self.layout not in (None, layout):
                        raise DistillError(
                            f"{path}: coded unlike the store's other shards; delete the folder"
                        )
                    self.layout = layout
                these = f.get_tensor("rows")
                rows.append(these)
                shard.append(torch.full_like(these, i))
                local.append(torch.arange(len(these)))
                if top_k:
                    offsets = f.get_tensor("offsets")
                    starts.append(offsets[:-1])
                    lengths.append(offsets.diff())
                for name in names:
                    sliced = f.get_slice(name)
                    self.bytes += math.prod(sliced.get_shape()) * _ITEM_BYTES[sliced.get_dtype()]
        if not rows:
            raise DistillError(f"{folder}: the store lists no shards; delete the folder")
        rows_cat = torch.cat(rows)
        order = torch.argsort(rows_cat)
        if not torch.equal(rows_cat[order], torch.arange(len(rows_cat))):
            raise DistillError(f"{folder}: the shards do not cover the training split; delete the folder")
        # By training row: its shard, its place in the shard, and (top-k) its target tokens there.
        self.shard, self.local = torch.cat(shard)[order], torch.cat(local)[order]
        if top_k:
            self.start, self.length = torch.cat(starts)[order], torch.cat(lengths)[order]

    def _names(self) -> tuple[str, ...]:
        """The per-token tensors of a top-k shard."""
        return ("logprobs", "ids", "tail") if self.format == "exact" else ("ids", "codes", "step", "mass")

    def _file(self, shard: int) -> Any:
        """The shard's open handle; at most ``OPEN_SHARDS`` stay open (the least recently used is
        closed), so the mapped pages a long run touches are let go with their handle."""
        handle = self._open.pop(shard, None)
        if handle is None:
            handle = safe_open(str(self.paths[shard]), framework="pt")
            if len(self._open) >= OPEN_SHARDS:
                self._open.pop(next(iter(self._open)))
        self._open[shard] = handle  # most recently used last
        return handle

    @property
    def tokens(self) -> int:
        return int(self.length.sum()) if self.top_k else len(self.shard)

    def mean_tail_probability(self) -> float:
        """The teacher's mean probability outside its stored top k, read one shard at a time."""
        total, count = 0.0, 0
        for i in range(len(self.paths)):
            if self.format == "exact":
                tail = self._file(i).get_tensor("tail").float()
            else:
                tail = store_codec.split(self._file(i).get_tensor("mass").float())[1]
            total, count = total + float(tail.exp().sum()), count + len(tail)
        return total / max(count, 1)

    def batch(self, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | TopK:
        """Teacher outputs laid out like the student's logits: ``[batch, labels]`` logits, or a
        :class:`TopK` with ``[batch, target_len, k]`` entries at the real target tokens."""
        with torch.autocast("cpu", enabled=False):  # read and decoded on the CPU, as stored (float16
            return self._batch(rows, labels)  # steps, float32 masses): not the student's autocast

    def _batch(self, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | TopK:
        rows = rows.cpu()
        shards, local = self.shard[rows].tolist(), self.local[rows].tolist()
        if not self.top_k:
            parts = [self._file(f).get_slice("logits")[i : i + 1] for f, i in zip(shards, local, strict=True)]
            return torch.cat(parts).to(labels.device)
        mask = labels != -100
        counts = mask.sum(-1).cpu()
        if not torch.equal(counts, self.length[rows]):
            raise DistillError(
                f"{self.folder}: stored target lengths differ from the batch's; delete the folder"
            )
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in self._names()}
        for f, start, n in zip(shards, self.start[rows].tolist(), counts.tolist(), strict=True):
            handle = self._file(f)
            for name, out in pieces.items():
                out.append(handle.get_slice(name)[start : start + n])
        parts = {name: torch.cat(out) for name, out in pieces.items()}
        if self.format == "exact":
            logprobs, ids, tail = parts["logprobs"], parts["ids"], parts["tail"]
        else:
            assert self.layout is not None
            k, bits, vocabulary = self.layout
            logprobs, ids, tail = store_codec.decode(parts, k, vocabulary, bits)
        k = ids.shape[-1]
        dense_logprobs = torch.zeros(*labels.shape, k, dtype=logprobs.dtype)
        dense_ids = torch.zeros(*labels.shape, k, dtype=ids.dtype)
        dense_tail = torch.zeros(*labels.shape, dtype=tail.dtype)
        where = mask.cpu()
        dense_logprobs[where], dense_ids[where], dense_tail[where] = logprobs, ids, tail
        device = labels.device
        return TopK(dense_logprobs.to(device), dense_ids.to(device), dense_tail.to(device))


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


def build(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    dataset: Dataset,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    model_inputs: Callable[[dict[str, Any]], dict[str, torch.Tensor]],
    folder: Path,
    *,
    settings: dict[str, Any],
    top_k: int,
    temperature: float,
    batch_size: int,
    chunk: int = 1024,
    vocabulary: int | None = None,
    bits: int = 0,
) -> TeacherStore:
    """The complete store of the teacher's soft labels over ``dataset`` in ``folder``: read if it
    is there (verified), else computed (continuing an interrupted build). ``bits`` > 0: top-k
    entries in the compact format, log-probabilities in that many bits."""

    if bits:  # what the reader decodes by (store_settings names it too, for validate's check)
        settings = {**settings, "teacher.cache_format": store_codec.FORMAT, "teacher.cache_bits": bits}

    def compute(rows: list[int]) -> dict[str, torch.Tensor]:
        return _compute(
            accelerator,
            teacher,
            dataset,
            rows,
            collate,
            model_inputs,
            top_k,
            temperature,
            batch_size,
            vocabulary,
            bits,
        )

    build_shards(accelerator, teacher, dataset, folder, settings=settings, chunk=chunk, compute=compute)
    store = TeacherStore(folder, top_k=top_k > 0)
    per = ""
    if top_k:
        lost = store.mean_tail_probability() if store.tokens else 0.0
        per = (
            f", {store.bytes / max(store.tokens, 1):.0f} bytes per target token; the teacher's mean "
            f"probability outside its top {top_k}: {lost:.2e}"
        )
    accelerator.print(
        f"teacher outputs: {folder} ({store.bytes / 2**20:.1f} MiB on disk, read as batches ask{per})"
    )
    return store


def build_shards(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    dataset: Dataset,
    folder: Path,
    *,
    settings: dict[str, Any],
    chunk: int,
    compute: Callable[[list[int]], dict[str, torch.Tensor]],
    what: str = "teacher outputs",
) -> list[str]:
    """Make ``folder`` hold ``compute(rows)`` for every shard of ``chunk`` rows of ``dataset``, each
    verified, and ``complete.json`` last; returns the shard names in row order.

    A complete folder of another fingerprint is refused; shards that an unfinished build of other
    settings left are removed first, never mixed in. Each process computes shards i with
    i mod N = its index and writes them itself.
    """
    key = fingerprint(teacher, dataset, settings)
    n_shards = (len(dataset) + chunk - 1) // chunk
    names = [f"shard_{i:05d}.safetensors" for i in range(n_shards)]
    recorded = atomic.read_json(folder / SETTINGS)
    current = atomic.strict(key)
    if recorded is not None and recorded != current:
        if atomic.read_json(folder / COMPLETE) is not None:
            changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
            raise DistillError(
                f"{folder} holds {what} made with other settings ({', '.join(changed)} changed); "
                "delete it or set teacher.cache_dir to another folder"
            )
        recorded = None
        if accelerator.is_main_process:
            log.warning("%s: unfinished %s of other settings, removed", folder, what)
            atomic.remove(folder)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic.disk_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
            atomic.clean_leftovers(folder)
        if recorded is None:
            atomic.write_json(folder / SETTINGS, key)
    accelerator.wait_for_everyone()
    intact = {i for i, name in enumerate(names) if _intact(folder, name)}
    todo = [i for i in range(n_shards) if i not in intact]
    if accelerator.is_main_process:
        for i in todo:
            if (folder / names[i]).exists():
                log.warning("%s: damaged or unfinished, computed again", folder / names[i])
    mine = [i for i in todo if i % accelerator.num_processes == accelerator.process_index]
    if todo:
        accelerator.print(f"{what}: {len(intact)} of {n_shards} shards stored, computing {len(todo)}")
        place(teacher, accelerator.device)
        progress = tqdm(
            total=sum(min(chunk, len(dataset) - i * chunk) for i in mine),
            desc=what,
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        try:
            for i in mine:
                rows = list(range(i * chunk, min((i + 1) * chunk, len(dataset))))
                _write_shard(folder, names[i], compute(rows))
                progress.update(len(rows))
        finally:
            progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and (todo or atomic.read_json(folder / COMPLETE) is None):
        missing = [name for name in names if not _intact(folder, name)]
        if missing:
            raise DistillError(f"{folder}: shards missing after the teacher's pass ({missing[0]}, ...)")
        atomic.write_json(folder / COMPLETE, {"shards": names, **key})
    accelerator.wait_for_everyone()
    return names


def _intact(folder: Path, name: str) -> bool:
    record = atomic.read_json(folder / f"{name}.json")
    path = folder / name
    if not isinstance(record, dict) or not path.is_file() or path.stat().st_size != record.get("size"):
        return False
    return _sha256(path) == record.get("sha256")


def _write_shard(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> None:
    path = folder / name
    tmp = path.with_name(f"{atomic.PARTIAL}{name}")
    with atomic.disk_errors(path):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as any file the run writes (safetensors makes it private)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    atomic.write_json(folder / f"{name}.json", {"size": path.stat().st_size, "sha256": _sha256(path)})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.inference_mode()
def _compute(
    accelerator: Accelerator,
    teacher: torch.nn.Module,
    dataset: Dataset,
    rows: list[int],
    collate: Callable,
    model_inputs: Callable,
    top_k: int,
    temperature: float,
    batch_size: int,
    vocabulary: int | None = None,
    bits: int = 0,
) -> dict[str, torch.Tensor]:
    """One shard: the teacher's outputs for ``rows``, in order (over the first ``vocabulary`` ids:
    the tokenizer's, where the output layer is padded beyond them)."""
    teacher.eval()
    logits_out, logprobs, ids, tails, lengths = [], [], [], [], []
    coded: list[dict[str, torch.Tensor]] = []
    universe = 0
    for start in range(0, len(rows), batch_size):
        batch = collate([dataset[r] for r in rows[start : start + batch_size]])
        inputs = {
            k: v.to(accelerator.device) for k, v in model_inputs(batch).items() if isinstance(v, torch.Tensor)
        }
        with accelerator.autocast():  # as the teacher runs online: in the run's precision
            logits = teacher(**inputs).logits
        if vocabulary is not None and logits.shape[-1] > vocabulary:
            logits = logits[..., :vocabulary]
        if not top_k:
            logits_out.append(logits.float().cpu())
            continue
        mask = batch["labels"].to(logits.device) != -100
        lengths.append(mask.sum(-1).cpu())
        real = logits[mask]  # [tokens, vocabulary], in row order
        universe = real.shape[-1]
        for part in range(0, len(real), TOKEN_CHUNK):
            top = top_k_of(real[part : part + TOKEN_CHUNK], top_k, temperature)
            if bits:
                coded.append(store_codec.encode(top.logprobs, top.ids, top.tail, universe, bits))
                continue
            logprobs.append(top.logprobs.cpu())
            ids.append(top.ids.to(torch.int32).cpu())
            tails.append(top.tail.cpu())
    out = {"rows": torch.tensor(rows, dtype=torch.long)}
    if not top_k:
        out["logits"] = torch.cat(logits_out)
        return out
    out["offsets"] = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(lengths).cumsum(0)])
    if bits:
        k = min(top_k, universe)
        empty = store_codec.encode(
            torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), torch.zeros(0), universe, bits
        )
        out.update({name: torch.cat([c[name] for c in coded] or [empty[name]]) for name in empty})
        out["layout"] = torch.tensor([k, bits, universe])
        return out
    out.update(logprobs=torch.cat(logprobs), ids=torch.cat(ids), tail=torch.cat(tails))
    return out
