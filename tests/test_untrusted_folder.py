"""A run folder copied from elsewhere runs no code on ``--resume``: checkpoint state that is not
tensors is JSON, and what Accelerate reads back goes through torch's restricted unpickler."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import recipe_dict, save_tiny_bert, write_recipe

from distill.cli import main


class Payload:
    """Unpickling this runs a command: what a hostile checkpoint file would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def reseal(checkpoint: Path) -> None:
    """Rewrite the manifest to match the files, as whoever altered them could."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {
        str(p.relative_to(checkpoint)): {
            "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture()
def unfinished(tmp_path, data_csv):
    """A run stopped after its step-4 checkpoint (its later outputs removed), and its recipe."""
    out = tmp_path / "out"
    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"),
        data_csv,
        out,
        train={"steps": 6, "checkpoint_every": 2},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    checkpoint = out / "stages" / "distill" / "checkpoints" / "step_4"
    state = json.loads((checkpoint / "scheduler.json").read_text())  # numbers, readable as they are
    assert state["last_epoch"] == 4
    for done in ("complete.json", "stages/distill/complete.json"):
        (out / done).unlink()
    return recipe, out, checkpoint


@pytest.mark.parametrize("target", ["scheduler.pt", "random_states_0.pkl"])
def test_resume_runs_no_code_from_a_copied_folder(unfinished, target, tmp_path, capsys):
    recipe, out, checkpoint = unfinished
    marker = tmp_path / "code-ran"
    if target == "scheduler.pt":  # a checkpoint in the earlier format, whose schedule was pickled
        (checkpoint / "scheduler.json").unlink()
    torch.save(Payload(marker), checkpoint / target)
    reseal(checkpoint)
    assert main(["run", str(recipe), "--resume"]) == 2
    assert not marker.exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("distill: error: distill: cannot resume from") and "step_4" in error
