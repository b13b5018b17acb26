"""``teacher.device_map``: a teacher larger than a device, placed by Accelerate's big-model dispatch
(across GPUs, offloaded to CPU or disk), serves the teacher store, sequence-level KD and online
per-token KD. Tested on the CPU with a memory cap that sends the whole teacher to disk: the
students and reports equal those of the same runs with the teacher loaded whole."""

from __future__ import annotations

import pytest
import torch
from conftest import read_report, write_recipe
from safetensors.torch import load_file
from test_causal_lm import causal_recipe, save_causal

from distill.api import validate
from distill.cli import main
from distill.errors import DistillError

OFFLOADED = {"device_map": "auto", "max_memory": {"cpu": "60KB"}}  # less than the teacher: all on disk


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_causal(tmp_path_factory.mktemp("big") / "teacher", "llama")


def _run(tmp_path, teacher, pairs_csv, name, teacher_section, loss):
    out = tmp_path / name
    raw = causal_recipe(
        teacher,
        pairs_csv,
        out,
        student={"init": "from_config", "config_overrides": {"num_hidden_layers": 2}},
        loss=loss,
        train={"steps": 4},
    )
    raw["teacher"].update(teacher_section)
    assert main(["run", str(write_recipe(tmp_path / f"{name}.yaml", raw))]) == 0
    return out


@pytest.mark.parametrize(
    "extra, loss",
    [({}, {"sequence_kd": "mix"}), ({"cache": True}, {})],
    ids=["online+sequence_kd", "store"],
)
def test_an_offloaded_teacher_distils_the_same_student(teacher, pairs_csv, tmp_path, extra, loss, capsys):
    whole = _run(tmp_path, teacher, pairs_csv, "whole", extra, loss)
    assert "placed by teacher.device_map" not in capsys.readouterr().out
    offloaded = _run(tmp_path, teacher, pairs_csv, "offloaded", {**extra, **OFFLOADED}, loss)
    assert "teacher: placed by teacher.device_map=auto: 1 part on disk" in capsys.readouterr().out
    a, b = (
        load_file(whole / "student" / "model.safetensors"),
        load_file(offloaded / "student" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first, second = read_report(whole), read_report(offloaded)
    for name in ("teacher", "student"):
        assert first["by_name"][name]["metrics"] == second["by_name"][name]["metrics"], name
    assert second["by_name"]["teacher"]["parameters"] == first["by_name"]["teacher"]["parameters"]


@pytest.mark.parametrize(
    "teacher_section, student, message",
    [
        ({"device_map": "auto", "finetune": {"enabled": True}}, None, "is not trained here"),
        ({"device_map": "auto"}, {"init": "copy_layers"}, "copies the teacher's weights"),
        ({"max_memory": {"cpu": "1GB"}}, None, "only with teacher.device_map"),
        ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, None, "is not a size"),
        ({"device_map": "auto", "max_memory": {"gpu0": "1GB"}}, None, "is not a device"),
        ({"device_map": "everywhere"}, None, "device_map"),
    ],
)
def test_placements_that_cannot_work_are_refused_in_one_line(
    teacher, pairs_csv, tmp_path, teacher_section, student, message
):
    raw = causal_recipe(
        teacher,
        pairs_csv,
        tmp_path / "out",
        student=student or {"init": "from_config", "config_overrides": {"num_hidden_layers": 2}},
    )
    raw["teacher"].update(teacher_section)
    with pytest.raises(DistillError, match=message) as caught:
        validate(raw)
    assert "\n" not in str(caught.value)


def test_an_offloaded_teacher_has_the_fingerprint_of_the_whole_one(teacher, tmp_path):
    """A store made with the teacher whole serves it placed across devices, and the other way."""
    import transformers as tf
    from datasets import Dataset

    from distill.teacher_store import fingerprint

    data = Dataset.from_dict({"input_ids": [[5, 6, 7]], "labels": [[5, 6, 7]]})
    whole = tf.AutoModelForCausalLM.from_pretrained(teacher)
    placed = tf.AutoModelForCausalLM.from_pretrained(
        teacher, device_map="auto", max_memory={"cpu": "150KB"}, offload_folder=str(tmp_path / "off")
    )
    assert set(map(str, placed.hf_device_map.values())) == {"cpu", "disk"}  # split between the two
    assert fingerprint(placed, data, {}) == fingerprint(whole, data, {})
