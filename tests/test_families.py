"""Model families beyond BERT for classification: decoder-only classifiers (GPT-2, Llama) whose
tokenizer has no pad token, and a shared-layer family (ALBERT) that copy_layers cannot serve."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LABELS, NEGATIVE, NEUTRAL, POSITIVE, recipe_dict, write_recipe
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from distill.cli import main


def decoder_tokenizer(folder):
    """A word-level tokenizer as GPT-2's and Llama's are for this purpose: an end token, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "</s>"] + POSITIVE + NEGATIVE + NEUTRAL
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return tok


def byte_level_tokenizer(folder, texts: list[str], eos: str = "<|endoftext|>"):
    """A byte-level BPE tokenizer learnt on ``texts``, as GPT-2's and Qwen2's are, with an end token
    and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=eos, model_input_names=["input_ids", "attention_mask"]
    )
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return tok


def qwen2_tokenizer(folder):
    """A byte-level tokenizer of the test words with <|endoftext|> its end token, as Qwen2's is.
    Transformers loads the tokenizer of a qwen2 model's folder as its own Qwen2Tokenizer whatever
    tokenizer_config.json names (qwen2 is among the model types whose hub class it overrides),
    rebuilt from the vocabulary and merges with Qwen2's pre-tokenizer: a word-level tokenizer would
    come back reading every word as unknown bytes."""
    words = POSITIVE + NEGATIVE + NEUTRAL
    return byte_level_tokenizer(folder, [" ".join(words)] * 5 + words + [" " + w for w in words])


def save_decoder_classifier(folder, family: str):
    from transformers import GPT2Config, LlamaConfig

    tok = decoder_tokenizer(folder)
    labels = dict(
        num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=4,
            n_head=2,
            n_positions=64,
            eos_token_id=1,
            bos_token_id=1,
            **labels,
        )
    else:
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            eos_token_id=1,
            bos_token_id=1,
            **labels,
        )
    assert config.pad_token_id is None
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("init", ["copy_layers", "from_config"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_only_classifier_without_a_pad_token(family, init, tmp_path, data_csv):
    teacher = save_decoder_classifier(tmp_path / "teacher", family)
    out = tmp_path / "out"
    student = (
        {"init": init, "num_layers": 2}
        if init == "copy_layers"
        else {"init": init, "config_overrides": {"num_hidden_layers": 2}}
    )
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(teacher, data_csv, out, student=student, eval={"latency": False})
    )
    assert main(["validate", str(recipe)]) == 0 and not out.exists()
    assert main(["run", str(recipe), "train.steps=3"]) == 0
    # The student's folder pads with the end token, in its tokenizer and its config.
    tok = AutoTokenizer.from_pretrained(out / "student")
    model = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert tok.pad_token == "</s>" and model.config.pad_token_id == tok.pad_token_id == 1
    assert model.config.num_hidden_layers == 2
    classify = pipeline("text-classification", model=str(out / "student"))
    texts = ["good great love the car", "bad"]  # different lengths: padded in one batch
    assert [p["label"] for p in classify(texts, batch_size=2)] == [
        p["label"] for p in classify(texts, batch_size=1)
    ]
    report = json.loads((out / "report.json").read_text())
    assert {m["name"] for m in report["models"]} == {"teacher", "student"}


def test_shared_layers_are_refused_for_copy_layers_with_a_way_forward(tmp_path, data_csv, capsys):
    from conftest import make_tokenizer
    from transformers import AlbertConfig, AlbertForSequenceClassification

    folder = tmp_path / "albert"
    tok = make_tokenizer(folder)
    AlbertForSequenceClassification(
        AlbertConfig(
            vocab_size=len(tok),
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
            id2label=dict(enumerate(LABELS)),
            label2id={n: i for i, n in enumerate(LABELS)},
        )
    ).save_pretrained(folder)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(folder, data_csv, out, eval={"latency": False}))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "its layers are shared, as in ALBERT); use student.init=from_config" in err
    assert not out.exists()
    overrides = [
        "student.init=from_config",
        "student.config_overrides={num_hidden_layers: 2}",
        "train.steps=2",
    ]
    assert main(["run", str(recipe), *overrides]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(out / "student").config.num_hidden_layers == 2


def encoder_config(family: str, vocab: int):
    """A tiny config of ``family``: 4 layers, 32 wide, the test labels, pad id 0 as the tokenizer's."""
    import transformers as tf

    labels = dict(
        num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    common = dict(
        vocab_size=vocab, num_attention_heads=2, max_position_embeddings=64, pad_token_id=0, **labels
    )
    bert_like = dict(hidden_size=32, num_hidden_layers=4, intermediate_size=64, **common)
    if family == "roberta":
        return tf.RobertaConfig(**bert_like)
    if family == "longformer":  # a window per layer: copied layers keep theirs
        return tf.LongformerConfig(attention_window=[4, 8, 4, 8], **bert_like)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(**bert_like)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=16, **bert_like)
    if family == "deberta-v2":
        return tf.DebertaV2Config(**bert_like)
    if family == "distilbert":
        return tf.DistilBertConfig(
            dim=32,
            n_layers=4,
            n_heads=2,
            hidden_dim=64,
            **{k: v for k, v in common.items() if k != "num_attention_heads"},
        )
    if family == "modernbert":
        return tf.ModernBertConfig(
            global_attn_every_n_layers=2,
            local_attention=8,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            **bert_like,
        )
    if family == "qwen2":
        return tf.Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_key_value_heads=1,
            eos_token_id=1,
            bos_token_id=1,
            **common,
        )
    raise ValueError(family)


ENCODERS = ["roberta", "xlm-roberta", "electra", "deberta-v2", "distilbert", "modernbert", "longformer"]


@pytest.mark.parametrize("init", ["copy_layers", "from_config"])
@pytest.mark.parametrize("family", [*ENCODERS, "qwen2"])
def test_family_matrix(family, init, tmp_path, data_csv):
    """Each family through validate and a short run; the saved student reloads with pipeline and
    reproduces the report's accuracy on the test split."""
    from conftest import make_tokenizer

    folder = tmp_path / "teacher"
    if family == "qwen2":  # Qwen2's tokenizer class pads with <|endoftext|>, its end token
        tok = qwen2_tokenizer(folder)
    else:
        tok = make_tokenizer(folder)
        if family in ("distilbert", "modernbert"):  # their tokenizers give no token_type_ids
            tok.model_input_names = ["input_ids", "attention_mask"]
            tok.save_pretrained(folder)
    config = encoder_config(family, len(tok))
    if family == "qwen2":
        config.pad_token_id = None
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    out = tmp_path / "out"
    student = (
        {"init": init, "num_layers": 2}
        if init == "copy_layers"
        else {"init": init, "config_overrides": {"num_hidden_layers": 2}}
    )
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(folder, data_csv, out, student=student, eval={"latency": False})
    )
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe), "train.steps=3"]) == 0
    report = json.loads((out / "report.json").read_text())
    accuracy = {m["name"]: m["metrics"]["accuracy"] for m in report["models"]}["student"]
    classify = pipeline("text-classification", model=str(out / "student"))
    assert classify.model.config.num_hidden_layers == 2
    from distill.config import load_recipe
    from distill.stages import prepare

    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]  # the run's test split
    names = classify.model.config.id2label
    predicted = [p["label"] for p in classify(list(test["text"]), batch_size=8)]
    truth = [names[i] for i in test["labels"]]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth) == pytest.approx(accuracy)


SEQ2SEQ = ["marian", "bart", "mbart", "fsmt", "t5"]


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_decoder_inputs_are_built_the_familys_own_way(family, tmp_path, translation_tokenized):
    """The collator's decoder inputs are the ones the model builds itself from the labels: the
    model's own loss path and ours see the same logits. MBart's start with the target's last token."""
    from conftest import save_seq2seq
    from transformers import AutoModelForSeq2SeqLM

    from distill.tasks import translation

    model = AutoModelForSeq2SeqLM.from_pretrained(save_seq2seq(tmp_path / family, family)).eval()
    tok, data = translation_tokenized
    batch = translation.collator(tok, model.config)([data[i] for i in range(6)])
    labels = batch["labels"]
    assert (labels == -100).any()  # uneven lengths: padding is in the labels
    assert torch.equal(batch["decoder_input_ids"], model.prepare_decoder_input_ids_from_labels(labels=labels))
    first = batch["decoder_input_ids"][:, 0]
    assert (
        first.tolist() == [1 if family in ("mbart", "fsmt") else 0] * 6
    )  # </s> for MBart and FSMT, <pad> for the others
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        ours = model(**translation.model_inputs(batch))
    if family != "fsmt":  # FSMT's own loss path builds its decoder inputs from the source ids (upstream)
        assert torch.equal(own.logits, ours.logits)
    generated = model.generate(input_ids=batch["input_ids"][:1], max_new_tokens=3, do_sample=False)
    assert generated[0, 0] == first[0]  # generation starts where training does


def test_mbart_generating_from_another_token_than_it_trains_with_is_refused(tmp_path, pairs_csv, capsys):
    """MBart as its config comes by default (no decoder start token: generate() starts with bos,
    <pad> here) trains behind </s>: refused before anything is written, with the fix."""
    from conftest import save_seq2seq, translation_recipe

    teacher = save_seq2seq(tmp_path / "mbart", "mbart", decoder_start_token_id=None)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", translation_recipe(teacher, pairs_csv, out))
    capsys.readouterr()
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert (
        "the teacher (mbart) is trained with decoder inputs starting with token 1 ('</s>') but "
        "generate() starts with 0 ('<pad>'); set decoder_start_token_id to 1 in its config.json" in err
    )
    assert not out.exists()


def test_a_model_without_a_causal_mask_under_its_cache_is_refused_with_the_fix(tmp_path, pairs_csv, capsys):
    """FSMT as its config comes (use_cache on) computes whole decoder inputs without a causal
    mask: the decoder would learn from the tokens it predicts. Refused before anything is written."""
    from conftest import save_seq2seq, translation_recipe

    teacher = save_seq2seq(tmp_path / "fsmt", "fsmt", use_cache=True)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", translation_recipe(teacher, pairs_csv, out))
    capsys.readouterr()
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the teacher (fsmt) computes otherwise on whole decoder inputs" in err
    assert "set use_cache to false in its config.json" in err
    assert not out.exists()


@pytest.mark.parametrize("init", ["copy_layers", "from_config"])
@pytest.mark.parametrize("family", SEQ2SEQ)
def test_translation_family_matrix(family, init, tmp_path, pairs_csv):
    """Each encoder-decoder family through validate and a short run; the saved student, reloaded
    with plain transformers, generates what gives the report's chrF on the test split."""
    import sacrebleu
    from conftest import save_seq2seq, translation_recipe
    from transformers import AutoModelForSeq2SeqLM

    from distill.config import load_recipe
    from distill.stages import prepare

    teacher = save_seq2seq(tmp_path / "teacher", family)
    out = tmp_path / "out"
    if init == "copy_layers":
        student = {"init": init, "num_decoder_layers": 1}
    else:
        depth = "num_decoder_layers" if family == "t5" else "decoder_layers"
        student = {"init": init, "config_overrides": {depth: 1}}
    raw = translation_recipe(teacher, pairs_csv, out, student=student, eval={"latency": False})
    raw["train"].update(steps=6, learning_rate=1e-2)
    raw["student"] = student  # translation_recipe's own student settings are replaced, not merged
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    report = json.loads((out / "report.json").read_text())
    chrf = {m["name"]: m["metrics"]["chrf"] for m in report["models"]}
    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]
    references = [t.strip() for t in test["target"]]

    def score(folder):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        hypotheses = []
        for i in range(0, len(test), 8):  # the report's batches: eval.batch_size 8
            batch = tok(list(test["source"][i : i + 8]), return_tensors="pt", padding=True)
            generated = model.generate(**batch, num_beams=2, max_new_tokens=10, do_sample=False)
            hypotheses += [t.strip() for t in tok.batch_decode(generated, skip_special_tokens=True)]
        return model, sacrebleu.corpus_chrf(hypotheses, [references]).score

    student, student_chrf = score(out / "student")
    assert student.config.model_type == family
    depth = student.config.num_decoder_layers if family == "t5" else student.config.decoder_layers
    assert depth == 1
    assert student_chrf == pytest.approx(chrf["student"])
    _, teacher_chrf = score(teacher)
    assert teacher_chrf > 0  # untrained, yet not empty: the comparison is not 0 == 0 for both
    assert teacher_chrf == pytest.approx(chrf["teacher"])


def test_a_translation_student_with_a_padded_vocabulary_distils_over_the_tokenizers_ids(
    tmp_path, pairs_csv, capsys
):
    """Real checkpoints pad their vocabulary: a BART student whose outputs cover 46 ids distils from
    a teacher's over the tokenizer's 38 (the padded rows in no loss), and never generates them."""
    import json

    from conftest import save_seq2seq, translation_recipe
    from transformers import AutoModelForSeq2SeqLM

    teacher = save_seq2seq(tmp_path / "teacher", "bart")
    padded = tmp_path / "padded"
    save_seq2seq(padded, "bart")
    model = AutoModelForSeq2SeqLM.from_pretrained(padded)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(padded)) + 8)
    model.save_pretrained(padded)
    out = tmp_path / "out"
    student = {"init": "pretrained", "name_or_path": str(padded)}
    raw = translation_recipe(teacher, pairs_csv, out, student=student, train={"steps": 2})
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    generation = json.loads((out / "student" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(38, 46))
    assert main(["evaluate", str(recipe), "--out", str(tmp_path / "again"), "eval.latency=false"]) == 0
    first = json.loads((out / "report.json").read_text())["models"]
    again = json.loads((tmp_path / "again" / "report.json").read_text())["models"]
    assert [m["metrics"] for m in first] == [m["metrics"] for m in again]


def test_a_copied_longformer_layer_keeps_its_attention_window():
    from distill.modeling import copy_layers

    teacher = AutoModelForSequenceClassification.from_config(encoder_config("longformer", 40))
    student = copy_layers(teacher, [1, 2])
    assert student.config.attention_window == [8, 4]
    assert [
        layer.attention.self.one_sided_attn_window_size for layer in student.longformer.encoder.layer
    ] == [4, 2]


def test_funnel_depth_is_refused_for_copy_layers_with_a_fix_that_works(tmp_path, data_csv, capsys):
    """Funnel's depth is its block_sizes: copy_layers says so in one line, and the fix it names
    (from_config with the config's own depth fields) validates and runs."""
    import transformers as tf
    from conftest import make_tokenizer

    folder = tmp_path / "teacher"
    tok = make_tokenizer(folder)
    labels = dict(
        num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    config = tf.FunnelConfig(
        vocab_size=len(tok), block_sizes=[1, 1, 1], d_model=32, n_head=2, d_head=16, d_inner=64, **labels
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    cases = [
        ({"init": "copy_layers", "num_layers": 2}, "copy_layers cannot set the depth of a funnel config"),
        (
            {"init": "from_config", "config_overrides": {"block_sizes": [1, 1]}},
            "the funnel config refuses ['block_sizes']: `block_sizes` and `block_repeats` should have the same length",
        ),
    ]
    capsys.readouterr()
    for student, message in cases:
        recipe = write_recipe(
            tmp_path / "r.yaml",
            recipe_dict(folder, data_csv, tmp_path / "out", student=student, eval={"latency": False}),
        )
        assert main(["validate", str(recipe)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("distill: error: ") and message in err, err
    fixed = {"init": "from_config", "config_overrides": {"block_sizes": [1, 1], "block_repeats": [1, 1]}}
    recipe = write_recipe(
        tmp_path / "r.yaml",
        recipe_dict(folder, data_csv, tmp_path / "out", student=fixed, eval={"latency": False}),
    )
    assert main(["run", str(recipe), "train.steps=2"]) == 0
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "student")
    assert list(saved.config.block_sizes) == [1, 1]
