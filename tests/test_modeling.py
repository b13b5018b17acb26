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
