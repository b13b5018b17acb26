"""How examples become batches: the data loaders of training and evaluation, the length-grouped
training order (``train.group_by_length``), and the endless, resumable stream of a stage's batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    collate: Callable,
    *,
    shuffle: bool,
    seed: int,
    group_by_length: bool = False,
) -> DataLoader:
    """Batches of ``dataset``; shuffled ones (training) drop the last partial batch.

    ``group_by_length`` (with ``shuffle``): :class:`LengthGroupedSampler` orders the examples.
    """
    # An own generator keeps DataLoader start-up from drawing on the global RNG, so that resuming
    # mid-epoch leaves dropout's random stream exactly where the uninterrupted run had it.
    generator = torch.Generator().manual_seed(seed)
    grouped = shuffle and group_by_length
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and not grouped,
        sampler=LengthGroupedSampler(example_lengths(dataset), batch_size, seed=seed) if grouped else None,
        drop_last=shuffle,
        collate_fn=collate,
        generator=generator,
        pin_memory=torch.cuda.is_available(),  # page-locked batches: host-to-GPU copies without a staging copy
    )


LENGTH_FIELDS = ("input_ids", "labels", "decoder_input_ids")  # what the collator pads


def example_lengths(dataset: Any) -> list[int]:
    """Tokens per example: the summed lengths of its padded sequence fields (an encoder-decoder's
    source and target both cost time). Read from Arrow where the data set is a ``datasets.Dataset``."""
    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(dataset, datasets.Dataset):
        table = dataset.with_format("arrow")[:]  # the rows in the data set's order (select / shuffle applied)
        total = np.zeros(len(dataset), dtype=np.int64)
        for name in LENGTH_FIELDS:
            kind = table.schema.field(name).type if name in table.column_names else None
            if kind is not None and (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
                total += pc.list_value_length(table[name]).to_numpy(zero_copy_only=False)
        return total.tolist()
    lengths = []
    for i in range(len(dataset)):
        row = dataset[i]
        lengths.append(
            sum(len(row[name]) for name in LENGTH_FIELDS if isinstance(row.get(name), (list, Tensor)))
        )
    return lengths


class LengthGroupedSampler(Sampler[int]):
    """Training order with less padding: each epoch, a seeded shuffle of all examples is cut into
    groups of ``group`` batches; each group is sorted by length, so every batch holds examples of
    about the same length, and the group's full batches are then put in a shuffled order (a run
    does not sweep from long to short). Transformers' ``group_by_length`` does the same, without the
    second shuffle.

    The order depends only on ``(seed, epoch)``: Accelerate's ``set_epoch`` reaches it through its
    batch samplers, each process draws the same order and takes its own batches from it, and a
    resumed run skips into the same sequence.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int, group: int = 50) -> None:
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.seed, self.group = batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=rng)
        span = self.batch_size * self.group
        out: list[Tensor] = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            # stable: equal lengths keep their shuffled order
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            full = len(chunk) // self.batch_size * self.batch_size
            batches = chunk[:full].view(-1, self.batch_size)
            out.append(batches[torch.randperm(len(batches), generator=rng)].flatten())
            out.append(chunk[full:])  # a short last group's partial batch stays last (drop_last drops it)
        return iter(torch.cat(out).tolist())


def endless(accelerator: Accelerator, dataloader: DataLoader, skip: int) -> Iterator[dict[str, Tensor]]:
    """Endless micro-batches, epoch after epoch, starting after the first ``skip`` ones.

    Each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches.
    """
    per_epoch = len(dataloader)
    epoch, offset = divmod(skip, per_epoch)
    while True:
        dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, offset) if offset else dataloader
        yield from loader
        epoch, offset = epoch + 1, 0
