"""Training under DeepSpeed ZeRO-3 on two gloo CPU processes, through the real launcher
(`accelerate launch --use_deepspeed --zero_stage 3`), DeepSpeed's own engine and Accelerate's
DeepSpeed code (``tests/deepspeed_on_cpu.py`` gives Accelerate the launch's process count, which it
records only on GPUs): the partitioned student trains as one process does, is gathered into a plain
``from_pretrained`` folder, checkpoints its partitioned state, and a run killed (-9) mid-stage
resumes to the same weights. DeepSpeed is installed beside the venv (``make install`` puts it in
``.venv/deepspeed``), on the path of these tests' processes only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import read_report, recipe_dict, save_tiny_bert, write_recipe
from safetensors.torch import load_file
from test_distributed import free_port
from test_faults import env
from test_fsdp import checkpointed_recipe, history, kill_all_when, run_one_and

from distill import zero
from distill.cli import main
from distill.errors import DistillError
from distill.plan import FINETUNE_MARKER

HERE = Path(__file__).resolve().parent
DEEPSPEED = Path(sys.prefix) / "deepspeed"  # pip install --target, by `make install`

needs_deepspeed = pytest.mark.skipif(
    not (DEEPSPEED / "deepspeed").is_dir(), reason=f"DeepSpeed is not installed in {DEEPSPEED} (make install)"
)


def ds_env(tmp: Path) -> dict[str, str]:
    base = env(tmp)
    return {
        **base,
        "PYTHONPATH": os.pathsep.join([str(DEEPSPEED), base["PYTHONPATH"]]),
        "PATH": os.pathsep.join([str(DEEPSPEED / "bin"), base.get("PATH", "")]),  # ninja, for its CPU ops
    }


def zero3(recipe: Path, out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"),
        *("--main_process_port", str(free_port()), "--use_deepspeed", "--zero_stage", "3", *launcher),
        *(
            str(HERE / "deepspeed_on_cpu.py"),
            "run",
            str(recipe),
            f"output.dir={out}",
            "train.batch_size=4",
            *extra,
        ),
    ]


@needs_deepspeed
def test_zero3_trains_as_one_process_saves_a_plain_folder_and_resumes_exactly(tmp_path, data_csv):
    recipe = checkpointed_recipe(tmp_path, data_csv)
    one, straight, killed = tmp_path / "one", tmp_path / "straight", tmp_path / "killed"
    run_one_and(recipe, one, zero3(recipe, straight), ds_env(tmp_path))

    # Partitioned for real: ZeRO's checkpoint layout, one model and one optimizer partition per rank.
    checkpoint = straight / "stages" / "distill" / "checkpoints" / "step_7"
    files = set(json.loads((checkpoint / "manifest.json").read_text())["files"])
    for rank in (0, 1):
        assert f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files, sorted(files)
    # The same global batch of 8: the same losses and gradient norms step by step, the same report.
    for key in ("train/loss", "train/grad_norm"):
        la = [h[key] for h in history(one) if key in h]
        lb = [h[key] for h in history(straight) if key in h]
        assert len(la) == len(lb) == 8 and la == pytest.approx(lb, rel=1e-4), key
    ra, rb = read_report(one), read_report(straight)
    assert ra["by_name"]["student"]["metrics"] == rb["by_name"]["student"]["metrics"]
    # The frozen teacher sharded for inference (teacher.shard=auto; torch's fully_shard beside the
    # engine), half of it on each process, giving the losses of the whole one above; the report
    # measured it whole again, read back from its folder.
    shard = json.loads((straight / "results.json").read_text())["teacher_sharded"]
    assert shard["processes"] == 2 and shard["parameters_per_process"] < 0.6 * shard["parameters"], shard
    assert ra["by_name"]["teacher"]["metrics"] == rb["by_name"]["teacher"]["metrics"]
    # Gathered into a whole, plain folder: every weight of the single-process student, close to it.
    a, b = (load_file(str(d / "student" / "model.safetensors")) for d in (one, straight))
    assert set(a) == set(b)
    assert all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    # Every process killed at once (a lost machine): the launcher and both ranks.
    trigger = killed / "stages" / "distill" / "checkpoints" / "step_4"
    kill_all_when(zero3(recipe, killed), ds_env(tmp_path), trigger)
    assert trigger.exists() and not (killed / "student").exists()
    resumed = subprocess.run(
        zero3(recipe, killed, "--resume"), env=ds_env(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    c = load_file(str(killed / "student" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert history(straight) == history(killed)


@needs_deepspeed
def test_zero3_decoder_only_in_bf16_with_a_teacher_fine_tuned_and_on_policy_samples(tmp_path, pairs_csv):
    """Two engines in one run (the teacher fine-tuned, then the student), generate() on a
    partitioned student (on-policy samples, greedy validation completions) keeping the processes in
    step, in bf16: the run ends with the losses of one process with the same global batch, and its
    folders load with plain transformers."""
    from test_causal_lm import causal_recipe, save_causal
    from transformers import AutoModelForCausalLM

    raw = causal_recipe(
        save_causal(tmp_path / "teacher", "llama"),
        pairs_csv,
        tmp_path / "unused",
        loss={"on_policy": 0.5},
        train={"steps": 4, "log_every": 1, "eval_every": 2, "seed": 5, "mixed_precision": "bf16"},
    )
    raw["teacher"]["finetune"] = {"enabled": True, "steps": 2, "batch_size": 8, "learning_rate": 1e-3}
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    run_one_and(recipe, one, zero3(recipe, two, "teacher.finetune.batch_size=4"), ds_env(tmp_path))
    la = [h["train/loss"] for h in history(one) if "train/loss" in h]
    lb = [h["train/loss"] for h in history(two) if "train/loss" in h]
    # bf16 (DeepSpeed holds the weights themselves in bf16): rounding differs; the on-policy steps lose ~0.005
    assert len(la) == len(lb) == 4 and la == pytest.approx(lb, rel=2e-2, abs=1e-3)
    marker = [json.loads((d / "teacher" / FINETUNE_MARKER).read_text())["validation"] for d in (one, two)]
    assert marker[0]["perplexity"] == pytest.approx(marker[1]["perplexity"], rel=1e-2), marker
    assert read_report(two)["mixed_precision"] == "bf16"
    # The fine-tuned teacher that scored the on-policy samples was sharded as well, half on each.
    shard = json.loads((two / "results.json").read_text())["teacher_sharded"]
    assert shard["processes"] == 2 and shard["parameters_per_process"] < 0.6 * shard["parameters"], shard
    for folder in ("teacher", "student"):
        AutoModelForCausalLM.from_pretrained(two / folder)  # plain transformers reads what was shipped


def test_what_a_deepspeed_launch_cannot_run_is_refused_in_one_line(tmp_path, data_csv, capsys, monkeypatch):
    """Refused before anything is written: DeepSpeed missing, several CPU processes (Accelerate
    would count one), a hidden-state loss (a second trained module), a config file's own optimizer,
    and a gathered save turned off; a launcher value distill sets from the recipe that differs."""
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", recipe_dict(save_tiny_bert(tmp_path / "teacher"), data_csv, out)
    )
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as `accelerate launch --use_deepspeed` sets it
    capsys.readouterr()

    def refused(*extra: str) -> str:
        assert main(["validate", str(recipe), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("distill: error: "), err
        return err[0]

    monkeypatch.setattr(zero, "deepspeed_installed", lambda: False)
    assert "DeepSpeed, which is not installed: pip install deepspeed" in refused()
    monkeypatch.setattr(zero, "deepspeed_installed", lambda: True)
    monkeypatch.setattr(zero, "accelerate_counts_processes", lambda: False)
    assert "which Accelerate sets up only on GPUs" in refused()
    monkeypatch.setattr(zero, "accelerate_counts_processes", lambda: True)
    assert refused("loss.hidden_weight=1", "loss.hidden=mse").startswith(
        "distill: error: loss.hidden_weight: the hidden-state loss"
    )
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "optimizer": {"type": "Adam"}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert "has an 'optimizer' section" in refused()
    config.write_text(json.dumps({"zero_optimization": {"stage": 3, zero.SAVE_GATHERED: False}}))
    assert f"{zero.SAVE_GATHERED} is false" in refused()
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false")
    assert f"{zero.SAVE_GATHERED} is false" in refused()
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")
    # A launcher value distill sets from the recipe that differs, caught by validate before any stage.
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "0.5")  # accelerate launch --gradient_clipping 0.5
    assert "DeepSpeed's gradient_clipping is 0.5 " in refused()
    assert main(["validate", str(recipe), "train.max_grad_norm=0.5"]) == 0
    monkeypatch.delenv("ACCELERATE_GRADIENT_CLIPPING")
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert main(["validate", str(recipe)]) == 0  # the recipe's batch is 8
    extra = ("teacher.finetune.enabled=true", "teacher.finetune.batch_size=16")
    assert "the recipe's teacher.finetune.batch_size makes it 16" in refused(*extra)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    assert main(["validate", str(recipe)]) == 0
    assert not out.exists()

    # Each stage's batch, accumulation and clipping written into the config; a launcher's differing
    # value (accelerate launch --gradient_clipping 0.5) refused rather than replaced.
    def accelerator(config: dict) -> SimpleNamespace:
        plugin = SimpleNamespace(deepspeed_config=config)
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), num_processes=2)

    acc = accelerator({"train_batch_size": "auto", "gradient_accumulation_steps": "auto"})
    zero.configure_stage(acc, batch_size=4, accumulation=3, max_grad_norm=1.0)
    config = acc.state.deepspeed_plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["train_batch_size"]) == (4, 24)
    assert (config["gradient_accumulation_steps"], config["gradient_clipping"]) == (3, 1.0)
    assert config["zero_optimization"][zero.SAVE_GATHERED] is True and acc.gradient_accumulation_steps == 3
    zero.configure_stage(acc, batch_size=8, accumulation=1, max_grad_norm=0.0)  # the next stage's own
    assert (config["train_batch_size"], config["gradient_clipping"]) == (16, 0.0)
    with pytest.raises(DistillError, match=r"DeepSpeed's gradient_clipping is 0.5 .* train.max_grad_norm"):
        zero.configure_stage(
            accelerator({"gradient_clipping": 0.5}), batch_size=4, accumulation=1, max_grad_norm=1.0
        )


@needs_deepspeed
def test_a_diverged_zero3_run_is_stopped_and_saves_nothing(tmp_path, data_csv):
    """The engine steps inside its backward: the loop's divergence check reads the gradient norm it
    computed, and the stage stops at the next log with one line, its student never saved."""
    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"),
        data_csv,
        tmp_path / "unused",
        train={"steps": 6, "log_every": 1, "learning_rate": 1e4, "checkpoint_every": 2},
        eval={"batch_size": 8, "latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    out = tmp_path / "diverged"
    proc = subprocess.run(
        zero3(recipe, out), env=ds_env(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert proc.returncode != 0
    assert "distill: error: distill: training diverged at step " in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("distill: error:")[0]  # none from distill's ranks
    assert not (out / "student").exists() and not (out / "report.json").exists()
