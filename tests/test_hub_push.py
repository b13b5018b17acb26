"""``output.push_to_hub``: the student folder, card included, uploaded once the run has finished;
refused before anything is written where it cannot happen (offline, no token, a bad id); an upload
that fails leaves the finished run whole and says how to upload it by hand. The hub's own calls
are replaced here (no network): what is tested is what distill hands them."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from conftest import recipe_dict, write_recipe
from huggingface_hub import ModelCard

from distill.cli import main


@pytest.fixture
def online(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    calls: list = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw.get("exist_ok")))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        card = ModelCard.load(folder / "README.md")
        calls.append(("upload", repo_id, folder, sorted(p.name for p in folder.iterdir()), card))

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def _recipe(tmp_path, teacher_dir, data_csv):
    raw = recipe_dict(teacher_dir, data_csv, tmp_path / "out", train={"steps": 2}, eval={"latency": False})
    return write_recipe(tmp_path / "r.yaml", raw), tmp_path / "out"


def test_the_finished_student_is_uploaded_with_its_card(online, tmp_path, teacher_dir, data_csv, capsys):
    recipe, out = _recipe(tmp_path, teacher_dir, data_csv)
    assert main(["run", str(recipe), "output.push_to_hub=someone/tiny-student"]) == 0
    assert [c[:2] for c in online] == [("create", "someone/tiny-student"), ("upload", "someone/tiny-student")]
    assert online[0][2] is True  # an existing repo is updated, not refused
    _, _, folder, files, card = online[1]
    assert folder == out / "student" and (out / "complete.json").is_file()  # uploaded after the run finished
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert 'pipeline("text-classification", model="someone/tiny-student")' in card.content
    assert {r.metric_type for r in card.data.eval_results} == {"accuracy", "macro_f1"}
    assert "uploaded: https://huggingface.co/someone/tiny-student" in capsys.readouterr().out
    # the baseline's card names its own folder, which is not uploaded
    assert 'model="baseline"' not in card.content


def test_a_failed_upload_leaves_the_run_finished_and_says_how_to_upload(
    online, tmp_path, teacher_dir, data_csv, capsys, monkeypatch
):
    def refused(self, **kw):
        raise OSError("Connection reset by peer\nsecond line")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refused)
    recipe, out = _recipe(tmp_path, teacher_dir, data_csv)
    assert main(["run", str(recipe), "output.push_to_hub=someone/tiny-student"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [x for x in err.splitlines() if x.startswith("distill: error")]
    assert len(errors) == 1
    line = errors[0]
    assert "Connection reset by peer second line" in line
    assert f"hf upload someone/tiny-student {out / 'student'}" in line
    assert (out / "complete.json").is_file() and (out / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "setting, env, message",
    [
        ("someone/tiny student", {}, "is not a hub repo id"),
        ("someone/tiny-student", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ("someone/tiny-student", {"HF_TOKEN": None}, "no Hugging Face token found"),
    ],
)
def test_an_upload_that_cannot_happen_is_refused_before_the_run(
    online, setting, env, message, tmp_path, teacher_dir, data_csv, capsys, monkeypatch
):
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, value)
    recipe, out = _recipe(tmp_path, teacher_dir, data_csv)
    for command in ("validate", "run"):
        assert main([command, str(recipe), f"output.push_to_hub={setting}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not out.exists() and online == []
