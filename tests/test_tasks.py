"""Every task module implements the whole protocol of distill/tasks/base.py, and nothing outside
distill/tasks/ branches on a task's name or imports a task module."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from distill import config, tasks
from distill.errors import DistillError
from distill.tasks import base

PACKAGE = Path(__file__).resolve().parent.parent / "distill"
CONSTANTS, FUNCTIONS = base.members()


def test_the_protocol_is_written_down():
    assert {"MODEL_CLASS", "TOKEN_LEVEL", "ENCODER_DECODER", "ALIGNED_LABELS"} <= set(CONSTANTS)
    assert {"check_recipe", "tokenize", "eval_step", "teacher_targets", "sample_completions"} <= set(
        FUNCTIONS
    )
    assert set(config.TASKS) == set(tasks.TASKS)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_each_task_implements_every_name_with_its_parameters(name):
    module = tasks.TASKS[name]
    for constant in CONSTANTS:
        assert hasattr(module, constant), f"{name} lacks {constant}"
    for flag in ("ENCODER_DECODER", "TOKEN_LEVEL", "ALIGNED_LABELS"):
        assert isinstance(getattr(module, flag), bool), (name, flag)
    for function in FUNCTIONS:
        assert callable(getattr(module, function, None)), f"{name} lacks {function}()"
        expected = [p for p in inspect.signature(getattr(base.Task, function)).parameters if p != "self"]
        found = list(inspect.signature(getattr(module, function)).parameters)
        assert found == expected, f"{name}.{function}{found} is not the protocol's {expected}"


@pytest.mark.parametrize(
    "name, call, message",
    [
        (
            "classification",
            "teacher_targets",
            "loss.sequence_kd: sequence-level KD is for translation and causal_lm",
        ),
        (
            "classification",
            "with_targets",
            "loss.sequence_kd: sequence-level KD is for translation and causal_lm",
        ),
        ("translation", "row_seeds", "loss.on_policy: on-policy distillation is for task causal_lm"),
    ],
)
def test_what_a_task_cannot_do_is_one_line(name, call, message):
    fn = getattr(tasks.TASKS[name], call)
    args = [None] * len([p for p in inspect.signature(fn).parameters.values() if p.kind != p.KEYWORD_ONLY])
    with pytest.raises(DistillError, match=re.escape(message)):
        fn(*args)


def test_no_generic_module_branches_on_a_task_or_imports_one():
    names = "|".join(config.TASKS)
    branch = re.compile(rf"""(==|!=|\bin)\s*\(?["']({names})["']|["']({names})["']\s*(==|!=)""")
    imports = re.compile(rf"from distill\.tasks\.({names}) import|from distill\.tasks import .*\b({names})\b")
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if branch.search(line) or imports.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, found
