"""The report (json, md, png), the no-teacher baseline, model cards, ``distill evaluate`` and
Hugging Face ``evaluate`` metrics, on tiny local models."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    make_tokenizer,
    read_report,
    recipe_dict,
    tiny_bert_config,
    write_recipe,
)
from safetensors.torch import load_file
from transformers import BertModel

from distill.cli import main
from distill.metrics import compute_extra

METRIC_SCRIPT = """
import datasets
import evaluate


class MyMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="share of exact matches",
            citation="",
            inputs_description="predictions, references",
            features=datasets.Features(
                {"predictions": datasets.Value("{kind}"), "references": {refs}}
            ),
        )

    def _compute(self, predictions, references):
        refs = [r[0] if isinstance(r, list) else r for r in references]
        return {"my_match": sum(int(p == r) for p, r in zip(predictions, refs)) / len(predictions), "note": "text"}
"""


def write_metric(folder: Path, kind: str = "int64", refs: str = 'datasets.Value("int64")') -> Path:
    """A Hugging Face ``evaluate`` metric module in ``folder`` (loaded with ``evaluate.load(folder)``)."""
    folder.mkdir(parents=True)
    (folder / f"{folder.name}.py").write_text(METRIC_SCRIPT.replace("{kind}", kind).replace("{refs}", refs))
    return folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def check_card(folder: Path, row: dict, report: dict, copy_to: Path) -> None:
    """The card as the hub reads it (huggingface_hub's ModelCard): its metadata and a model-index
    holding the measured results; its usage snippet runs on a copy of the folder elsewhere."""
    import os
    import re

    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert "knowledge-distillation" in data.tags and data.base_model is None  # a local teacher
    assert data.model_name == folder.name
    measured = {r.metric_type: r.metric_value for r in data.eval_results}
    assert measured == pytest.approx(row["metrics"], abs=1e-6)
    assert {r.dataset_split for r in data.eval_results} == {report["split"]}
    assert {r.dataset_name for r in data.eval_results} == {"tweets.csv"}
    # The usage snippet, run where a copy of the folder lies (nothing points back to the run).
    code = re.search(r"```python\n(.*?)```", card.content, re.S).group(1)
    copy_to.mkdir()
    shutil.copytree(folder, copy_to / folder.name)
    here = os.getcwd()
    os.chdir(copy_to)
    try:
        exec(compile(code, "usage", "exec"), {})
    finally:
        os.chdir(here)


def check_figure(report: dict) -> None:
    """report.png as drawn: its title says the result, a panel per timed batch size, the quality axis
    from 0, the timing spread as error bars; several students add their mean ± sd."""
    import copy

    import matplotlib.pyplot as plt

    from distill.report import figure

    by = report["by_name"]
    student, teacher, baseline = by["student"], by["teacher"], by["baseline"]
    fig = figure(report)
    try:
        title = fig._suptitle.get_text()
        kept = student["metrics"]["accuracy"] / teacher["metrics"]["accuracy"]
        gap = 100 * (student["metrics"]["accuracy"] - baseline["metrics"]["accuracy"])
        speed = student["speedup"]["forward"]["batch_1"]
        assert title == (
            f"student keeps {kept:.1%} of the teacher's accuracy at {speed:.1f}x its speed (batch 1); "
            f"{gap:+.2f} points over the no-teacher baseline"
        )
        axes = fig.get_axes()
        assert [ax.get_xlabel().split(" (")[0] for ax in axes] == [
            "ms per example at batch 1",
            "ms per example at batch 32",
        ]
        assert axes[0].get_ylim()[0] == 0 and axes[0].get_xlim()[0] == 0
        # one error-bar series per role, each point at (ms per example, accuracy)
        points = axes[1].lines
        drawn = {tuple(np.round(line.get_xydata()[0], 6)) for line in points if len(line.get_xydata()) == 1}
        for m in report["models"]:
            cell = m["latency"]["forward"]["batch_32"]
            assert tuple(np.round([cell["ms_per_example"], m["metrics"]["accuracy"]], 6)) in drawn
    finally:
        plt.close(fig)
    # Three seeds of a student: their mean ± sd is drawn, and the title speaks of all three.
    several = copy.deepcopy(report)
    extra = [dict(copy.deepcopy(student), name=f"student-{i}") for i in (2, 3)]
    several["models"] += extra
    accs = [student["metrics"]["accuracy"]] * 3
    several["groups"] = [
        {"role": "student", "n": 3, "mean": {"accuracy": accs[0]}, "std": {"accuracy": 0.01}}
    ]
    fig = figure(several)
    try:
        assert fig._suptitle.get_text().startswith(f"the 3 students keep {kept:.1%}")
        labels = fig.get_axes()[-1].get_legend_handles_labels()[1]
        assert "student mean ± sd (3)" in labels
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, teacher_dir, data_csv):
    """One run with train.baseline=true; shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("baseline_run")
    out = tmp / "out"
    raw = recipe_dict(teacher_dir, data_csv, out, train={"steps": 6, "baseline": True})
    recipe = write_recipe(tmp / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    return recipe, out


def test_run_ends_with_report_files_and_model_cards(baseline_run, tmp_path):
    _, out = baseline_run
    report = read_report(out)
    assert report["schema"] == "distill.report/1"
    assert [m["name"] for m in report["models"]] == ["teacher", "student", "baseline"]
    assert [m["role"] for m in report["models"]] == ["teacher", "student", "baseline"]
    assert report["metrics"] == ["accuracy", "macro_f1"] and report["primary_metric"] == "accuracy"
    teacher = report["by_name"]["teacher"]
    assert teacher["retained"]["accuracy"] == 1.0
    settings = report["latency_settings"]
    assert settings["batch_sizes"] == [1, 32] and settings["modes"] == ["forward"]
    for m in report["models"]:
        # Size on disk: the weight files of the saved folder (fp32: 4 bytes per parameter + header).
        assert m["size_mb"] == pytest.approx(4 * m["parameters"] / 1e6, abs=0.02)
        for key in ("batch_1", "batch_32"):
            t = m["latency"]["forward"][key]
            assert t["ms_per_batch"] > 0 and t["examples_per_s"] > 0
            expected = teacher["latency"]["forward"][key]["ms_per_example"] / t["ms_per_example"]
            assert m["speedup"]["forward"][key] == pytest.approx(expected)
        assert m["throughput"]["forward"] == m["latency"]["forward"]["batch_32"]["examples_per_s"]
        assert m["retained"]["macro_f1"] == pytest.approx(
            m["metrics"]["macro_f1"] / teacher["metrics"]["macro_f1"]
        )
    for name in ("student", "baseline"):
        on_disk = (out / name / "model.safetensors").stat().st_size / 1e6
        assert report["by_name"][name]["size_mb"] == pytest.approx(on_disk)
    # Batch 1 times one example per call: ms per batch is ms per example.
    t1 = teacher["latency"]["forward"]["batch_1"]
    assert t1["ms_per_batch"] == pytest.approx(t1["ms_per_example"])

    md = (out / "report.md").read_text()
    assert "| teacher | teacher |" in md and "| baseline | baseline |" in md
    assert f"{report['by_name']['student']['metrics']['accuracy']:.4f}" in md
    assert "without the teacher" in md
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    check_figure(report)

    for name in ("student", "baseline"):
        card = (out / name / "README.md").read_text()
        assert "## How it was made" in card and "## Results" in card
        assert f"{report['by_name'][name]['metrics']['accuracy']:.4f}" in card
        check_card(out / name, report["by_name"][name], report, tmp_path / name)
    assert "T²·kl(teacher ‖ student) at T = 2" in (out / "student" / "README.md").read_text()
    assert "no teacher" in (out / "baseline" / "README.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert set(results["baseline_validation"]) == {"accuracy", "macro_f1"}


def test_baseline_is_the_student_trained_without_the_teacher(baseline_run, tmp_path):
    """The baseline equals a run of the same recipe with loss.alpha=0 (cross-entropy only), bit for
    bit, and differs from the distilled student."""
    recipe, out = baseline_run
    alone = tmp_path / "alone"
    assert main(["run", str(recipe), f"output.dir={alone}", "loss.alpha=0", "eval.latency=false"]) == 0
    base, ce_only, kd = weights(out / "baseline"), weights(alone / "student"), weights(out / "student")
    assert base.keys() == ce_only.keys()
    assert all(torch.equal(base[k], ce_only[k]) for k in base)
    assert any(not torch.equal(base[k], kd[k]) for k in base)


def test_evaluate_command_compares_saved_models(baseline_run, tmp_path, capsys):
    recipe, out = baseline_run
    # A second student (another seed), in its own output folder.
    other = tmp_path / "seed7"
    assert main(["run", str(recipe), f"output.dir={other}", "train.seed=7", "eval.latency=false"]) == 0
    capsys.readouterr()
    report_dir = tmp_path / "report"
    argv = ["evaluate", str(recipe), "eval.latency=false", "--out", str(report_dir)]
    argv += ["--teacher", str(out / "teacher" if (out / "teacher").exists() else recipe_teacher(recipe))]
    argv += ["--student", str(out), "--student", str(other / "student"), "--baseline", str(out / "baseline")]
    assert main(argv) == 0
    assert "student: keeps" not in capsys.readouterr().out  # several students: named by folder
    report = read_report(report_dir)
    assert [m["name"] for m in report["models"]] == ["teacher", "out", "seed7", "baseline"]
    assert report["latency_settings"] is None
    # The same test split and models as the run's own report: the same scores.
    run_report = read_report(out)
    for mine, theirs in (("teacher", "teacher"), ("out", "student"), ("baseline", "baseline")):
        assert report["by_name"][mine]["metrics"] == run_report["by_name"][theirs]["metrics"]
    (group,) = report["groups"]
    scores = [report["by_name"][n]["metrics"]["accuracy"] for n in ("out", "seed7")]
    assert group["role"] == "student" and group["n"] == 2
    assert group["mean"]["accuracy"] == pytest.approx(statistics.fmean(scores))
    assert group["std"]["accuracy"] == pytest.approx(statistics.stdev(scores))
    assert "mean ± sd of 2" in (report_dir / "report.md").read_text()
    assert (report_dir / "report.png").stat().st_size > 0


def recipe_teacher(recipe: Path) -> str:
    import yaml

    return yaml.safe_load(recipe.read_text())["teacher"]["name_or_path"]


def test_evaluate_bad_input_is_one_line_exit_2(baseline_run, tmp_path, capsys):
    recipe, out = baseline_run
    report_dir = tmp_path / "report"

    def run(*extra: str) -> str:
        capsys.readouterr()
        code = main(["evaluate", str(recipe), "eval.latency=false", "--out", str(report_dir), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("distill: error:"), err
        return err

    # A folder that is not a model.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a model folder (no config.json" in run("--student", str(empty))
    assert "no such folder" in run("--student", str(tmp_path / "missing" / "x" / "student"))
    # A student with another tokenizer.
    other_tok = tmp_path / "other_tok"
    shutil.copytree(out / "student", other_tok)
    make_tokenizer(other_tok, extra=["zebra"])
    assert "tokenizer" in run("--student", str(other_tok))
    # A student with another label set.
    relabelled = tmp_path / "relabelled"
    shutil.copytree(out / "student", relabelled)
    config = json.loads((relabelled / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "meh", "2": "good"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (relabelled / "config.json").write_text(json.dumps(config))
    assert "predicts the labels ['bad', 'meh', 'good']" in run("--student", str(relabelled))
    # A teacher without a trained head (a backbone with the right label names).
    backbone = tmp_path / "backbone"
    tok = make_tokenizer(backbone)
    names = {0: "negative", 1: "neutral", 2: "positive"}
    BertModel(
        tiny_bert_config(len(tok), id2label=names, label2id={v: k for k, v in names.items()})
    ).save_pretrained(backbone)
    assert "lacks trained weights for this task (classifier.bias" in run(
        "--teacher", str(backbone), "--student", str(out / "student")
    )
    # An evaluation set without the needed column.
    assert "text_column" in run("data.text_column=body", "--student", str(out / "student"))
    assert not report_dir.exists()


def test_hugging_face_evaluate_metric_from_a_local_module(tmp_path, teacher_dir, data_csv, capsys):
    metric = write_metric(tmp_path / "my_match")
    out = tmp_path / "out"
    raw = recipe_dict(
        teacher_dir, data_csv, out, train={"steps": 2}, eval={"metrics": [str(metric)], "latency": False}
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    report = read_report(out)
    assert "my_match/my_match" in report["metrics"]  # the string value "note" is left out
    for m in report["models"]:
        # Exact matches of class ids are the accuracy: the module got the same predictions.
        assert m["metrics"]["my_match/my_match"] == pytest.approx(m["metrics"]["accuracy"])
    # A metric that cannot be loaded fails before anything is written.
    capsys.readouterr()
    code = main(["run", str(recipe), f"output.dir={tmp_path / 'o2'}", f"eval.metrics=[{tmp_path / 'nope'}]"])
    assert code == 2 and "eval.metrics: cannot load metric" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_translation_metric_inputs_are_text_with_reference_lists(tmp_path):
    from distill.tasks import translation

    metric = write_metric(tmp_path / "text_match", "string", 'datasets.Sequence(datasets.Value("string"))')
    hyps, refs = ["un deux", "trois"], [["un deux"], ["quatre"]]
    assert compute_extra([str(metric)], hyps, refs) == {"text_match/my_match": 0.5}

    class Tok:  # decodes ids to words, as a tokenizer's batch_decode does
        words = {1: "un", 2: "deux", 3: "trois"}

        def batch_decode(self, rows, skip_special_tokens=True):
            return [" ".join(self.words[i] for i in row) for row in rows]

    preds, references = translation.metric_inputs([[1, 2, -100]], [[1, 3, -100]], Tok())
    assert preds == ["un deux"] and references == [["un trois"]]


def test_model_names_in_a_comparison():
    from distill.compare import names_for

    assert names_for("student", ["runs/a"]) == ["student"]
    assert names_for("student", ["runs/s1", "runs/s2/student", "other/s1/"]) == ["s1", "s2", "s1-2"]
    assert names_for("baseline", ["runs/s1/baseline", "runs/s2"]) == ["s1-baseline", "s2-baseline"]


def test_latency_carries_its_spread_and_flags_noisy_timings(monkeypatch):
    """Each model's timing carries its fastest and slowest pass and their spread, which flags a model
    whose passes vary widely (as on a busy machine). The clock is the models' own: each forward
    pass advances it, so no real time is read."""
    from torch import nn

    from distill import speed

    clock = [0.0]
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])

    class Steady(nn.Module):
        def forward(self, x):
            clock[0] += 0.002
            return x

    class Jumpy(nn.Module):
        calls = 0

        def forward(self, x):
            Jumpy.calls += 1
            clock[0] += 0.002 if Jumpy.calls % 2 else 0.012
            return x

    examples = [{"x": torch.zeros(1)} for _ in range(2)]
    collate = lambda rows: {"x": torch.stack([r["x"] for r in rows])}  # noqa: E731
    timed = speed.measure_latency(
        {"steady": Steady(), "jumpy": Jumpy()}, examples, collate, batch_size=2, repeats=4
    )
    assert timed["steady"]["spread"] == pytest.approx(0.0)
    # the warm-up pass takes call 1; the timed passes are 12, 2, 12 and 2 ms: median 7 ms
    assert timed["jumpy"]["passes_s"] == pytest.approx([0.012, 0.002, 0.012, 0.002])
    assert timed["jumpy"]["spread"] == pytest.approx(0.010 / 0.007)
    assert timed["jumpy"]["ms_per_example"] == pytest.approx(3.5)
    assert timed["jumpy"]["min_ms_per_example"] == pytest.approx(1.0)
    assert timed["jumpy"]["max_ms_per_example"] == pytest.approx(6.0)


def test_noisy_latency_is_said_in_the_report(tmp_path, teacher_dir, data_csv):
    from distill.report import console_summary, latency_warning, markdown

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    assert main(["run", str(recipe), "train.steps=2", "eval.latency_repeats=3"]) == 0
    report = read_report(out)
    settings = report["latency_settings"]
    assert settings["noisy_threshold"] == 0.3 and len(settings["load_average"]) == 2
    for m in report["models"]:
        cell = m["latency"]["forward"]["batch_1"]
        assert cell["min_ms_per_example"] <= cell["ms_per_example"] <= cell["max_ms_per_example"]
        low, high = m["speedup_range"]["forward"]["batch_1"]
        assert low <= high
    # The same report with one model's passes spread wide: flagged in report.md and the console.
    for m in report["models"]:  # the measured spreads depend on the machine's load: fixed here
        for cells in m["latency"].values():
            for cell in cells.values():
                cell["spread"] = 0.1
    report["models"][1]["latency"]["forward"]["batch_1"]["spread"] = 0.6
    settings["noisy"] = [report["models"][1]["name"]]
    warning = latency_warning(report)
    assert warning.startswith("Latency is noisy: the timed passes of student differ by up to 60%")
    assert f"**Warning:** {warning}" in markdown(report)
    assert console_summary(report).splitlines()[-1] == f"warning: {warning}"
    settings["noisy"] = []
    assert latency_warning(report) is None and "Warning" not in markdown(report)


def test_the_report_is_replaced_as_a_set(tmp_path, monkeypatch):
    """A failure while rendering leaves the previous report.json, .md and .png all in place."""
    from distill import report as report_module

    out = tmp_path / "out"
    out.mkdir()
    for name in report_module.REPORT_FILES:
        (out / name).write_text(f"old {name}")

    def broken(report, path):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report_module, "markdown", lambda report: "new md")
    monkeypatch.setattr(report_module, "plot", broken)
    with pytest.raises(RuntimeError, match="rendering failed"):
        report_module.write_report({"schema": "x"}, out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        report_module.REPORT_FILES
    )
    for name in report_module.REPORT_FILES:
        assert (out / name).read_text() == f"old {name}"
