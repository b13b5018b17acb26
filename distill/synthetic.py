"""Data sets generated on the fly, for recipes that must run offline. A plain dict names them.

``num2words``: numbers written out in two languages (cardinals, ordinals, years), a real
parallel corpus in miniature. Every number is used once, so the validation and test numbers are
never seen in training in any form.
"""

from __future__ import annotations

import math
import random

from datasets import Dataset, DatasetDict

from distill.config import DataConfig
from distill.errors import DistillError

FORMS = (("cardinal", 0.6), ("ordinal", 0.25), ("year", 0.15))


def num2words_pairs(cfg: DataConfig) -> DatasetDict:
    """``synthetic_examples`` pairs ``{source_lang: ..., target_lang: ...}``, split into train /
    validation / test by number (seeded). Numbers are drawn log-uniformly below
    ``synthetic_max_number``, so that small and large ones are equally common; years are drawn
    from 1000-2099."""
    try:
        from num2words import num2words
    except ImportError:
        raise DistillError(
            "data.synthetic: num2words needs the num2words package (pip install num2words)"
        ) from None
    # translation names the languages as source/target columns, causal_lm as prompt/completion columns
    src, tgt = cfg.source_column or cfg.prompt_column, cfg.target_column or cfg.completion_column
    for lang in (src, tgt):
        try:
            num2words(1, lang=lang)
        except NotImplementedError:
            raise DistillError(f"data: num2words has no language '{lang}'") from None
    held_out = int(cfg.validation_size) + int(cfg.test_size)
    total = cfg.synthetic_examples
    if held_out >= total:
        raise DistillError("data.synthetic_examples: must be more than validation_size + test_size")
    rng = random.Random(cfg.seed)
    used: set[int] = set()
    rows: list[dict[str, str]] = []
    top = math.log10(cfg.synthetic_max_number)
    while len(rows) < total:
        form = rng.choices([f for f, _ in FORMS], weights=[w for _, w in FORMS])[0]
        n = rng.randint(1000, 2099) if form == "year" else int(10 ** rng.uniform(0, top))
        if n in used:  # each number once, in one form
            continue
        used.add(n)
        rows.append({src: num2words(n, lang=src, to=form), tgt: num2words(n, lang=tgt, to=form)})
    test = rows[: int(cfg.test_size)]
    validation = rows[int(cfg.test_size) : held_out]
    train = rows[held_out:]
    out = DatasetDict({cfg.train_split: Dataset.from_list(train)})
    if cfg.validation_split:
        out[cfg.validation_split] = Dataset.from_list(validation)
    if cfg.test_split:
        out[cfg.test_split] = Dataset.from_list(test)
    return out


SYNTHETIC = {"num2words": num2words_pairs}
