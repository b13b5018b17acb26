"""Custom loss terms from Python (`distill.run(..., loss_terms=[distill.LossTerm(...)])`): added to
the distillation loss with the built-ins' contract (sums over items), logged, checked on a batch
before anything is written, and recorded so that a resume with another term is refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import recipe_dict
from safetensors.torch import load_file

import distill
from distill.errors import DistillError


def logit_gap(student_outputs, teacher_outputs, batch):
    """Squared distance of the student's logits to the teacher's, summed over the examples."""
    return ((student_outputs.logits - teacher_outputs.logits) ** 2).sum()


def logit_gap_mean(student_outputs, teacher_outputs, batch):
    return ((student_outputs.logits - teacher_outputs.logits) ** 2).sum(-1).mean()


def cls_cosine(student_outputs, teacher_outputs, batch):
    """1 - cosine of the last layers' first-token states, summed over the examples."""
    s = student_outputs.hidden_states[-1][:, 0]
    t = teacher_outputs.hidden_states[-1][:, 0]
    return (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).sum()


def _recipe(teacher_dir, data_csv, out, **sections):
    return recipe_dict(
        teacher_dir,
        data_csv,
        out,
        train={"steps": 4, "log_every": 2, **sections.pop("train", {})},
        eval={"latency": False},
        **sections,
    )


def test_a_term_is_added_weighted_logged_and_reaches_the_weights(tmp_path, teacher_dir, data_csv):
    plain = distill.run(_recipe(teacher_dir, data_csv, tmp_path / "plain"))
    zero = distill.run(
        _recipe(teacher_dir, data_csv, tmp_path / "zero"),
        loss_terms=[distill.LossTerm("gap", logit_gap, 0.0)],
    )
    used = distill.run(
        _recipe(teacher_dir, data_csv, tmp_path / "used", train={"baseline": True}),
        loss_terms=[distill.LossTerm("gap", logit_gap, 0.5), distill.LossTerm("cls", cls_cosine, 1.0, True)],
    )
    weights = {
        name: load_file(r.student_dir / "model.safetensors")
        for name, r in (("plain", plain), ("zero", zero), ("used", used))
    }
    # Weight 0: the same gradient as without the term, so the same student bit for bit.
    assert all(torch.equal(weights["plain"][k], weights["zero"][k]) for k in weights["plain"])
    assert any(not torch.equal(weights["plain"][k], weights["used"][k]) for k in weights["plain"])
    logged = [h for h in used.results["history"] if "train/loss" in h]
    assert [h["step"] for h in logged] == [2, 4]
    for h in logged:
        assert h["train/gap"] > 0 and 0 <= h["train/cls"] <= 2
        # the loss is the built-in mix plus the weighted terms, all per item
        mix = 0.5 * h["train/soft"] + 0.5 * h["train/hard"]
        assert h["train/loss"] == pytest.approx(mix + 0.5 * h["train/gap"] + h["train/cls"], rel=1e-5)
    assert all("train/gap" not in h for h in plain.results["history"])
    # The baseline is the hard labels alone: no custom term there either.
    assert used.results["baseline_history"] and all(
        "train/gap" not in h for h in used.results["baseline_history"]
    )
    recorded = json.loads((used.output_dir / "results.json").read_text())
    assert recorded["history"] == used.results["history"]


@pytest.mark.parametrize(
    "term, message",
    [
        (distill.LossTerm("gap", logit_gap_mean), "not a mean"),
        (distill.LossTerm("gap", lambda s, t, b: logit_gap(s, t, b).detach()), "has no gradient"),
        (
            distill.LossTerm("gap", lambda s, t, b: (s.logits - t.logits).pow(2).sum(-1)),
            "a 0-dim floating tensor",
        ),
        (
            distill.LossTerm("gap", lambda s, t, b: s.hidden_states[-1].sum()),
            "fails on a batch of 4 training",
        ),
        (distill.LossTerm("gap", lambda s, t, b: s.logits.sum() * float("nan")), "it must be finite"),
        (distill.LossTerm("soft", logit_gap), "'soft' is a built-in term's name"),
        (distill.LossTerm("two words", logit_gap), "is an identifier"),
        ("gap", "distill.LossTerm instances"),
    ],
)
def test_a_term_breaking_the_contract_is_refused_by_validate_in_one_line(
    term, message, tmp_path, teacher_dir, data_csv
):
    with pytest.raises(DistillError, match=message) as caught:
        distill.validate(_recipe(teacher_dir, data_csv, tmp_path / "out"), loss_terms=[term])
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_terms_are_refused_where_they_cannot_be_used(tmp_path, teacher_dir, data_csv):
    term = distill.LossTerm("gap", logit_gap)
    with pytest.raises(DistillError, match="teacher.cache: custom loss terms"):
        distill.validate(
            _recipe(teacher_dir, data_csv, tmp_path / "a", teacher={"cache": True}), loss_terms=[term]
        )
    raw = _recipe(teacher_dir, data_csv, tmp_path / "b", loss={"terms": ["gap"]})
    with pytest.raises(DistillError, match=r"loss.terms\[0\]: custom loss terms are passed from Python"):
        distill.validate(raw)
    with pytest.raises(DistillError, match="two loss terms share a name"):
        distill.validate(_recipe(teacher_dir, data_csv, tmp_path / "c"), loss_terms=[term, term])


def test_a_resume_with_another_term_is_refused_and_with_the_same_one_finishes(
    tmp_path, teacher_dir, data_csv
):
    raw = _recipe(teacher_dir, data_csv, tmp_path / "out")
    first = distill.run(raw, loss_terms=[distill.LossTerm("gap", logit_gap, 0.5)])
    (first.output_dir / "complete.json").unlink()  # as if stopped before the run's last write
    for other in (distill.LossTerm("gap", logit_gap_mean, 0.5), distill.LossTerm("gap", logit_gap, 0.25)):
        with pytest.raises(DistillError, match="another loss.terms passed from Python"):
            distill.run(raw, loss_terms=[other], resume=True)
    with pytest.raises(DistillError, match="another loss.terms passed from Python"):
        distill.run(raw, resume=True)  # without any term
    again = distill.run(raw, loss_terms=[distill.LossTerm("gap", logit_gap, 0.5)], resume=True)
    assert again.scores["student"] == first.scores["student"]
