"""A tokenizer trained on the recipe's own texts (``tokenizers`` library), for teachers built from scratch.

Unigram pieces over Metaspace words, as SentencePiece does: spaces are kept in the pieces, so
decoding gives back exactly the text that was encoded (hyphens, accents, spacing). Without that,
BLEU would measure the tokenizer instead of the model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from distill.errors import DistillError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A Unigram tokenizer of at most ``vocab_size`` pieces; encodings end with ``</s>``."""
    core = Tokenizer(models.Unigram())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], unk_token=UNK, show_progress=False
    )
    core.train_from_iterator(texts, trainer)
    eos = core.token_to_id(EOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=model_max_length
    )


def check_round_trip(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> None:
    """Every text must decode back to itself; the first that does not is named in the error."""
    for text in texts:
        back = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        if back != text:
            raise DistillError(f"the trained tokenizer does not round-trip {text!r}: it decodes to {back!r}")
