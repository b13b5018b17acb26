"""Raw data: load from the hub or local files, dedupe, carve the missing splits, subsample.

Task modules turn these raw splits into model inputs (labels, tokenization, collation).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from distill import memory
from distill.config import DataConfig
from distill.errors import DistillError
from distill.modeling import resolve_path

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_raw(cfg: DataConfig, columns: dict[str, str]) -> DatasetDict:
    """The ``train``, ``validation`` and ``test`` splits (test may be absent), checked and deduped.

    ``columns`` maps config keys to the columns the task reads (``{"text_column": "text", ...}``),
    in order: the first is the text that ``dedupe`` compares, the second (if any) must agree
    between repeats. Rows with an empty value in any of them are dropped, with a warning.
    """
    loaded = _load(cfg)
    if cfg.train_split not in loaded:
        raise DistillError(
            f"data.train_split: no split '{cfg.train_split}' in the data (splits: {', '.join(loaded)})"
        )
    keep = {cfg.train_split, cfg.validation_split, cfg.test_split} - {""}
    for name, split in loaded.items():
        if name not in keep:
            continue
        for key, column in columns.items():
            if column not in split.column_names:
                raise DistillError(
                    f"data.{key}: no column '{column}' in split '{name}' (columns: {', '.join(split.column_names)})"
                )
    names = list(columns.values())
    splits = {name: _drop_incomplete(split, names, name) for name, split in loaded.items() if name in keep}
    text, agree = names[0], (names[1] if len(names) > 1 else None)

    train = splits[cfg.train_split]
    held_out = {
        role: splits[name]
        for role, name in (("test", cfg.test_split), ("validation", cfg.validation_split))
        if name in splits
    }
    if cfg.dedupe:
        train = _dedupe(train, text, agree, "train")
        held_out = {role: _dedupe(ds, text, agree, role) for role, ds in held_out.items()}
        train = _drop_overlap(train, text, held_out)
    # Carve what is missing from train, seeded: test first, then validation from the rest.
    for role, name, size in (
        ("test", cfg.test_split, cfg.test_size),
        ("validation", cfg.validation_split, cfg.validation_size),
    ):
        if role in held_out or not name:
            continue
        if size == 0:
            if role == "validation":
                raise DistillError(
                    "data.validation_size: the data has no validation split, so it must be > 0"
                )
            continue
        train, held_out[role] = _carve(train, size, cfg.seed, role)
        log.info("carved a %s split of %d examples from '%s'", role, len(held_out[role]), cfg.train_split)

    out = DatasetDict(train=_subsample(train, cfg.max_train_examples, cfg.seed))
    for role in ("validation", "test"):
        if role in held_out:
            out[role] = _subsample(held_out[role], cfg.max_eval_examples, cfg.seed)
    for role, split in out.items():
        if len(split) == 0:
            raise DistillError(f"data: the {role} split is empty")
    if not cfg.dedupe:
        _warn_overlap(out, text)
    return out


def _warn_overlap(splits: DatasetDict, column: str) -> None:
    """Held-out examples whose text is also in the training split are scored as memorised ones."""
    seen = {normalise_text(t) for t in splits["train"][column]}
    for role in ("validation", "test"):
        if role not in splits:
            continue
        repeated = sum(normalise_text(t) in seen for t in splits[role][column])
        if repeated:
            log.warning(
                "%d of the %d %s examples also appear in the training split (case, spacing and URLs "
                "ignored); set data.dedupe=true to drop repeats and keep them out of training",
                repeated,
                len(splits[role]),
                role,
            )


def _load(cfg: DataConfig) -> DatasetDict:
    if memory.is_reference(cfg.dataset):  # a data set passed from Python
        return memory.dataset(cfg.dataset)
    if cfg.synthetic:
        from distill.synthetic import SYNTHETIC

        return SYNTHETIC[cfg.synthetic](cfg)
    if cfg.dataset:
        try:
            loaded = datasets.load_dataset(cfg.dataset, cfg.dataset_config or None)
        except Exception as e:  # datasets raises many unrelated types for a missing or unreachable dataset
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistillError(f"cannot load dataset '{cfg.dataset}': {reason[:300]}") from None
        if not isinstance(loaded, DatasetDict):
            raise DistillError(f"dataset '{cfg.dataset}' did not load as named splits")
        return loaded
    files: dict[str, str] = {}
    formats = set()
    for split, name in cfg.files.items():
        path = Path(resolve_path(name))
        if not path.is_file():
            raise DistillError(f"data.files.{split}: file not found: {name}")
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise DistillError(
                f"data.files.{split}: unsupported file type '{suffix}' (use {', '.join(FORMATS)})"
            )
        formats.add(FORMATS[suffix])
        files[split] = str(path)
    if len(formats) != 1:
        raise DistillError(f"data.files: all files must have one format, got {', '.join(sorted(formats))}")
    fmt = formats.pop()
    kwargs = {"encoding": cfg.encoding} if fmt == "csv" else {}
    try:
        return datasets.load_dataset(fmt, data_files=files, **kwargs)
    except Exception as e:  # parse errors surface as several pyarrow / pandas / datasets types
        cause = _root_cause(e)
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        empty = re.search(r'Instruction "(.+)" corresponds to no data', reason)
        if empty:
            raise DistillError(
                f"data: the {empty.group(1)} split is empty ({files[empty.group(1)]})"
            ) from None
        if isinstance(cause, UnicodeDecodeError):
            raise DistillError(
                f"data.files: the {fmt} data is not {cause.encoding} text ({reason}); set data.encoding "
                "to the files' encoding (e.g. latin-1)"
            ) from None
        raise DistillError(f"data.files: cannot read {fmt} data: {reason[:300]}") from None


def _root_cause(error: BaseException) -> BaseException:
    """The error a library's wrapper (``DatasetGenerationError``) was raised from: the parser's own."""
    seen = set()
    while id(error) not in seen and (error.__cause__ or error.__context__) is not None:
        seen.add(id(error))
        inner = error.__cause__ or error.__context__
        if type(error).__name__ != "DatasetGenerationError" and not str(error).startswith(
            "An error occurred"
        ):
            break
        error = inner
    return error


def _drop_incomplete(ds: Dataset, columns: list[str], name: str) -> Dataset:
    """Rows whose text (the first column) is missing or empty, or whose other columns are missing
    or blank, are dropped. An empty list beyond the text is a value: a multi-label example with no
    label (a token-classification example with words but no tags is refused by its task)."""

    def complete(row: dict) -> bool:
        return _filled(row[columns[0]]) and all(_filled(row[c], empty_list=True) for c in columns[1:])

    kept = ds.filter(complete, desc=f"checking {name}")
    if len(kept) < len(ds):
        log.warning("split '%s': dropped %d rows with an empty text or label", name, len(ds) - len(kept))
    return kept


def _filled(value: object, empty_list: bool = False) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):  # e.g. a translation column: {"en": ..., "fr": ...}
        return all(_filled(v) for v in value.values())
    if isinstance(value, list):  # e.g. a token-classification example's words or tags
        return empty_list or bool(value)
    return True


_RETWEET = re.compile(r"^(rt\s+@\w+:?\s*)+")
_URL = re.compile(r"https?://\S+")


def normalise_text(text: object) -> str:
    """The key used to find repeated texts: lower case, URLs and leading retweet markers removed, spaces collapsed."""
    if isinstance(text, list):  # a token-classification example's words
        text = " ".join(str(w) for w in text)
    text = _URL.sub(" ", str(text).lower())
    return " ".join(_RETWEET.sub("", text.strip()).split())


def _dedupe(ds: Dataset, column: str, label_column: str | None, name: str) -> Dataset:
    first: dict[str, int] = {}
    conflicting: set[str] = set()
    keys = [normalise_text(t) for t in ds[column]]
    # Repeats whose labels disagree are dropped altogether: neither label is trustworthy.
    values = ds[label_column] if label_column else [None] * len(keys)
    for i, key in enumerate(keys):
        if key in first:
            if values[first[key]] != values[i]:
                conflicting.add(key)
        else:
            first[key] = i
    keep = [i for key, i in first.items() if key not in conflicting]
    keep.sort()
    if len(keep) < len(ds):
        log.info(
            "split '%s': kept %d of %d rows after dropping repeated texts (%d texts had conflicting labels and were dropped)",
            name,
            len(keep),
            len(ds),
            len(conflicting),
        )
    return ds.select(keep)


def _drop_overlap(train: Dataset, column: str, held_out: dict[str, Dataset]) -> Dataset:
    seen = {normalise_text(t) for ds in held_out.values() for t in ds[column]}
    if not seen:
        return train
    keep = [i for i, t in enumerate(train[column]) if normalise_text(t) not in seen]
    if len(keep) < len(train):
        log.info("dropped %d training rows whose text is also in a held-out split", len(train) - len(keep))
        return train.select(keep)
    return train


def _carve(train: Dataset, size: float, seed: int, role: str) -> tuple[Dataset, Dataset]:
    n = int(size) if size >= 1 else max(1, round(size * len(train)))
    if n >= len(train):
        raise DistillError(
            f"data.{role}_size: cannot carve {n} {role} examples from a training split of {len(train)}"
        )
    parts = train.train_test_split(test_size=n, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _subsample(ds: Dataset, limit: int, seed: int) -> Dataset:
    if not limit or len(ds) <= limit:
        return ds
    return ds.shuffle(seed=seed).select(range(limit))
