import pytest
import torch
from conftest import make_tokenizer, save_tiny_bert, tiny_bert_config
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.config import StudentConfig
from distill.errors import DistillError
from distill.modeling import (
    build_student,
    check_same_tokenizer,
    copy_layers,
    default_layer_map,
    evenly_spaced,
    freeze,
    load_pretrained,
    resolve_path,
)


@pytest.fixture()
def teacher():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(40, num_hidden_layers=6)).eval()


def test_evenly_spaced_is_distilbert_style():
    assert evenly_spaced(12, 6) == [0, 2, 4, 6, 8, 10]
    assert evenly_spaced(6, 2) == [0, 3]
    assert evenly_spaced(6, 3) == [0, 2, 4]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]


def test_copied_layers_equal_the_teachers(teacher):
    student = copy_layers(teacher, [1, 4])
    assert student.config.num_hidden_layers == 2
    for s_i, t_i in enumerate([1, 4]):
        s_layer = student.bert.encoder.layer[s_i].state_dict()
        t_layer = teacher.bert.encoder.layer[t_i].state_dict()
        assert s_layer.keys() == t_layer.keys()
        for k in s_layer:
            assert torch.equal(s_layer[k], t_layer[k]), k
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    # A copy, not shared storage: training the student leaves the teacher alone.
    student.classifier.weight.data.add_(1.0)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_copy_of_all_layers_reproduces_the_teacher(teacher):
    student = copy_layers(teacher, list(range(6))).eval()
    x = torch.randint(5, 40, (3, 7))
    assert torch.allclose(student(input_ids=x).logits, teacher(input_ids=x).logits, atol=1e-6)


def test_build_student_from_config_overrides(teacher):
    spec = StudentConfig(
        init="from_config",
        config_overrides={"num_hidden_layers": 3, "hidden_size": 16, "intermediate_size": 32},
    )
    student, copied = build_student(spec, teacher, AutoModelForSequenceClassification, {"num_labels": 3})
    assert copied is None
    assert student.config.num_hidden_layers == 3 and student.config.hidden_size == 16
    assert student.config.vocab_size == teacher.config.vocab_size
    spec = StudentConfig(init="from_config", config_overrides={"num_hiden_layers": 3})
    with pytest.raises(
        DistillError, match=r"student.config_overrides.num_hiden_layers: .*did you mean 'num_hidden_layers'"
    ):
        build_student(spec, teacher, AutoModelForSequenceClassification, {"num_labels": 3})


def test_freeze_makes_teacher_untrainable(teacher):
    frozen = freeze(teacher, "bfloat16")
    assert not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())
    assert next(frozen.parameters()).dtype == torch.bfloat16


def test_default_layer_map():
    assert default_layer_map(2, 6, [0, 3]) == {0: 0, 1: 3}
    assert default_layer_map(2, 6, None) == {0: 2, 1: 5}
    assert default_layer_map(3, 12, None) == {0: 3, 1: 7, 2: 11}


def test_tokenizer_check(tmp_path):
    a = make_tokenizer(tmp_path / "a")
    check_same_tokenizer(a, make_tokenizer(tmp_path / "b"))
    with pytest.raises(
        DistillError,
        match=r"tokenizer differs.*vocabulary sizes 33 vs 34; only in the student's: \['zebra'\]",
    ):
        check_same_tokenizer(a, make_tokenizer(tmp_path / "c", extra=["zebra"]))
    d = make_tokenizer(tmp_path / "d")
    d.add_special_tokens({"pad_token": "[MASK]"})
    with pytest.raises(
        DistillError, match=r"special token pad_token is \('\[PAD\]', 0\) in the teacher's, \('\[MASK\]', 4\)"
    ):
        check_same_tokenizer(a, d)


def test_pkg_paths_resolve_without_importing(tmp_path):
    import sys

    assert resolve_path("some/hub-id") == "some/hub-id"
    assert resolve_path("pkg:distill/tasks").endswith("distill/tasks")
    with pytest.raises(
        DistillError, match=r"package 'no_such_pkg' is not installed \(pip install no-such-pkg\)"
    ):
        resolve_path("pkg:no_such_pkg/model")
    with pytest.raises(DistillError, match="does not exist in the installed package"):
        resolve_path("pkg:distill/missing-folder")
    assert "no_such_pkg" not in sys.modules


def test_local_model_loads(tmp_path):
    folder = save_tiny_bert(tmp_path / "m")
    model = load_pretrained(AutoModelForSequenceClassification.from_pretrained, str(folder), "teacher")
    assert model.config.num_hidden_layers == 4


def save_tiny_distilbert(folder):
    """A tiny DistilBERT classifier (its depth field is n_layers) with a DistilBERT tokenizer."""
    from conftest import LABELS, NEGATIVE, NEUTRAL, POSITIVE, SPECIAL
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizer

    words = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL
    tok = DistilBertTokenizer(
        vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=64
    )
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=len(tok),
        dim=32,
        n_layers=4,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("key", ["num_hidden_layers", "n_layers"])
def test_config_overrides_take_the_common_aliases(key, tmp_path, data_csv, capsys):
    """DistilBERT calls its depth n_layers: num_hidden_layers (an alias) works as well, and the
    depth checks use the student's real depth."""
    from conftest import recipe_dict, write_recipe
    from transformers import AutoModelForSequenceClassification

    from distill.cli import main

    teacher = save_tiny_distilbert(tmp_path / "teacher")
    out = tmp_path / "out"
    raw = recipe_dict(teacher, data_csv, out, student={"init": "from_config", "config_overrides": {key: 1}})
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    # Student layer 1 does not exist in a 1-layer student (the teacher's depth would have allowed it).
    assert (
        main(["validate", str(recipe), "loss.hidden=mse", "loss.hidden_weight=1", "loss.layer_map={1: 3}"])
        == 2
    )
    assert (
        "loss.layer_map: student layer 1 does not exist; the student has 1 layers" in capsys.readouterr().err
    )
    assert main(["run", str(recipe), "train.steps=2", "eval.latency=false"]) == 0
    assert AutoModelForSequenceClassification.from_pretrained(out / "student").config.n_layers == 1
    assert main(["validate", str(recipe), "student.config_overrides={n_layer: 1}"]) == 2
    assert (
        "student.config_overrides.n_layer: not a field of the teacher's distilbert config (did you mean 'n_layers'?)"
        in capsys.readouterr().err
    )


def test_student_config_maps_aliases_for_gpt2():
    from transformers import GPT2Config

    from distill.modeling import student_config

    assert student_config(GPT2Config(n_layer=4), {"num_hidden_layers": 1}).n_layer == 1


def test_copied_layers_keep_their_attention_type(tmp_path):
    """ModernBERT alternates global and sliding-window attention (config.layer_types): a copied
    layer keeps its own type, the student saves and reloads, and a from_config student of another
    depth gets the types its config's rule gives."""
    from transformers import (
        AutoModelForSequenceClassification,
        ModernBertConfig,
        ModernBertForSequenceClassification,
    )

    from distill.modeling import copy_layers, student_config

    config = ModernBertConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        global_attn_every_n_layers=2,
        local_attention=8,
        max_position_embeddings=64,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    torch.manual_seed(0)
    teacher = ModernBertForSequenceClassification(config).eval()
    assert teacher.config.layer_types == ["full_attention", "sliding_attention"] * 2
    student = copy_layers(teacher, [1, 2]).eval()
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s").eval()
    x = torch.randint(3, 40, (2, 24))  # longer than the 8-token local window
    assert torch.equal(student(input_ids=x).logits, reloaded(input_ids=x).logits)
    full = copy_layers(teacher, [0, 1, 2, 3]).eval()
    assert torch.allclose(full(input_ids=x).logits, teacher(input_ids=x).logits, atol=1e-5)
    shallow = student_config(teacher.config, {"num_hidden_layers": 3})
    assert shallow.layer_types == ["full_attention", "sliding_attention", "full_attention"]
