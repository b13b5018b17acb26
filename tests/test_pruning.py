"""`student.init: prune` and `student.layers: auto`: the teacher pruned by measured importance.

A prune that keeps everything is the teacher; units whose importance is zero can go without
changing the outputs; the ranking is deterministic; every family's pruned student is a plain
model of a smaller config that reloads with transformers; impossible targets are one line."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from conftest import tiny_bert_config

from distill import pruning
from distill.config import PruneConfig, StudentConfig
from distill.errors import DistillError
from distill.modeling import build_student

VOCAB = 40


def family(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    ids = dict(vocab_size=VOCAB, pad_token_id=0)
    if name == "bert":
        return tf.BertForSequenceClassification(tiny_bert_config(VOCAB, hidden_dropout_prob=0.0))
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=32, **ids))
    if name in ("llama", "qwen2", "mistral"):
        config_class = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig}[name]
        config = config_class(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            **ids,
        )
        return tf.AutoModelForCausalLM.from_config(config)
    if name == "llama-classifier":
        config = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_labels=3,
            **ids,
        )
        return tf.LlamaForSequenceClassification(config)
    if name == "marian":
        return tf.MarianMTModel(
            tf.MarianConfig(
                d_model=16,
                encoder_layers=2,
                decoder_layers=4,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=24,
                decoder_start_token_id=0,
                **ids,
            )
        )
    if name == "bart":
        return tf.BartForConditionalGeneration(
            tf.BartConfig(
                d_model=16,
                encoder_layers=2,
                decoder_layers=4,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
                **ids,
            )
        )
    assert name == "t5"
    return tf.T5ForConditionalGeneration(
        tf.T5Config(
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_decoder_layers=4,
            num_heads=2,
            decoder_start_token_id=0,
            feed_forward_proj="gated-gelu",
            **ids,
        )
    )


FAMILIES = ["bert", "gpt2", "llama", "qwen2", "mistral", "llama-classifier", "marian", "bart", "t5"]
HEADS = {"llama", "qwen2", "mistral", "llama-classifier"}


def batches(model: torch.nn.Module, n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (4, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 7:] = 0  # one padded row
        batch = {"input_ids": ids, "attention_mask": mask}
        if model.config.is_encoder_decoder:
            labels = torch.randint(3, VOCAB, (4, 6), generator=g)
            labels[1, 4:] = -100
            batch["labels"] = labels
        out.append(batch)
    return out


def outputs(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits


def spec(**targets) -> StudentConfig:
    return StudentConfig(init="prune", prune=PruneConfig(**targets))


def build(teacher, student_spec, calib):
    record = {}
    student, kept = build_student(student_spec, teacher, type(teacher), {}, lambda: calib, record)
    return student.eval(), kept, record


@pytest.mark.parametrize("name", FAMILIES)
def test_a_prune_that_keeps_everything_is_the_teacher(name):
    teacher = family(name).eval()
    calib = batches(teacher)
    full = {"layers": 1.0, "intermediate": 1.0, "heads": 1.0, "hidden": 1.0}
    student, kept, record = build(teacher, spec(**full), calib)
    assert kept == list(range(pruning.depth_stack(pruning.stacks_of(teacher)).depth))
    for b in calib:
        assert torch.equal(outputs(student, b), outputs(teacher, b))
    assert len(record["importance"]["layer_scores"]) == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_student_of_each_family_is_a_smaller_plain_model(name, tmp_path):
    teacher = family(name).eval()
    calib = batches(teacher)
    targets = {"layers": 0.5, "intermediate": 0.75, "heads": 0.5 if name in HEADS else 1.0}
    student, kept, record = build(teacher, spec(**targets), calib)
    assert len(kept) == 2
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student.parameters())
    assert s_params < t_params
    # The config says the new sizes, and plain transformers reloads it (through the Auto classes).
    student.save_pretrained(tmp_path)
    config = tf.AutoConfig.from_pretrained(tmp_path)
    reloaded = type(teacher).from_pretrained(tmp_path).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == s_params
    for b in calib:
        assert torch.equal(outputs(reloaded, b), outputs(student, b))
    assert record["pruned"]["layers"] == kept
    hidden = pruning.hidden_of(teacher.config)
    kept_widths = {
        stack.side or "layers": pruning.mlp_parts(teacher.get_submodule(stack.prefix)[0], hidden)[0] * 3 // 4
        for stack in pruning.stacks_of(teacher)
    }
    assert record["pruned"]["intermediate"] == kept_widths
    for stack in pruning.stacks_of(student):
        width = pruning.mlp_parts(student.get_submodule(stack.prefix)[0], hidden)[0]
        assert width == kept_widths[stack.side or "layers"]
    if name in HEADS:
        assert config.num_key_value_heads == 1 and config.num_attention_heads == 2
        assert config.head_dim == 8


@pytest.mark.parametrize("name", ["bert", "llama", "t5", "gpt2"])
def test_units_of_zero_importance_go_without_changing_the_outputs(name):
    """Neurons (and, for Llama, a key/value group) that never fire are ranked last and pruned;
    the pruned student computes exactly what the teacher does."""
    teacher = family(name).eval()
    stacks = pruning.stacks_of(teacher)
    hidden = pruning.hidden_of(teacher.config)
    with torch.no_grad():
        for stack in stacks:
            for block in teacher.get_submodule(stack.prefix):
                width, ups, _ = pruning.mlp_parts(block, hidden)
                dead = torch.arange(0, width, 2)  # every other neuron: zero in, zero out
                for up in ups:
                    module = block.get_submodule(up)
                    if isinstance(module, tf.pytorch_utils.Conv1D):
                        module.weight[:, dead] = 0
                    else:
                        module.weight[dead] = 0
                    if getattr(module, "bias", None) is not None:
                        module.bias[dead] = 0
                if name == "llama":
                    v = block.get_submodule(pruning.attention_parts(block)["v_proj"])
                    v.weight[:8] = 0  # key/value group 0 (head size 8): its query heads output zero
    calib = batches(teacher)
    targets = {"layers": 1.0, "intermediate": 0.5, "heads": 0.5 if name == "llama" else 1.0}
    student, _, record = build(teacher, spec(**targets), calib)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    for b in batches(teacher, seed=1):  # other inputs than the calibration's
        torch.testing.assert_close(outputs(student, b), outputs(teacher, b), rtol=0, atol=1e-5)


HIDDEN = ["bert", "llama", "qwen2", "llama-classifier"]


@pytest.mark.parametrize("name", HIDDEN)
def test_hidden_channels_of_zero_importance_are_the_ones_pruned(name, tmp_path):
    """Residual channels that every norm zeroes (zero in the embeddings and the output biases,
    zero gain and bias at every norm) score 0 and are the ones that go: the student's weights are the
    teacher's on the live channels. Where heads follow the hidden size (BERT) whole heads go
    with them; elsewhere the head size stays. The smaller config reloads with transformers."""
    teacher = family(name).eval()
    hidden = pruning.hidden_of(teacher.config)
    dead = torch.arange(1, hidden, 2)  # every other channel
    live = torch.arange(0, hidden, 2)
    dims = pruning.residual_dims(teacher, "student.prune")
    with torch.no_grad():
        for param_name, param in teacher.named_parameters():
            module = teacher.get_submodule(param_name.rsplit(".", 1)[0])
            if isinstance(module, torch.nn.Embedding) or pruning._is_norm(module, hidden):
                param.index_fill_(dims[param_name][0], dead, 0.0)
            elif param_name.endswith("bias") and param_name in dims:
                param.index_fill_(0, dead, 0.0)  # a block's output bias writes no dead channel
    calib = batches(teacher)
    scores = pruning.measure(teacher, calib, method="skip_kl", width=False, heads=True, channels=True).hidden
    assert torch.all(scores[dead] == 0) and torch.all(scores[live] > 0)

    student, _, record = build(teacher, spec(layers=1.0, hidden=0.5), calib)
    assert record["pruned"]["hidden"] == hidden // 2 == pruning.hidden_of(student.config)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    embeddings = [
        k for k in student_state if "embed" in k and k.endswith("weight") and student_state[k].dim() == 2
    ]
    assert embeddings
    for key in embeddings:
        assert torch.equal(student_state[key], teacher_state[key][:, live])
    if name == "bert":  # head size 16 stays; one of the two heads goes with half the channels
        assert student.config.num_attention_heads == 1
        assert record["pruned"]["heads"] == 1
    else:
        assert student.config.head_dim == pruning._head_dim(teacher.config)
        assert student.config.num_attention_heads == teacher.config.num_attention_heads
    student.save_pretrained(tmp_path)
    reloaded = type(teacher).from_pretrained(tmp_path).eval()
    for b in calib:
        assert torch.equal(outputs(reloaded, b), outputs(student, b))


def test_hidden_heads_and_width_together_make_a_model_a_quarter_the_size():
    teacher = family("llama").eval()
    student, kept, record = build(
        teacher, spec(layers=0.5, intermediate=0.5, heads=0.5, hidden=0.5), batches(teacher)
    )
    config = student.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (16, 24, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    assert record["pruned"] == {
        "layers": kept,
        "intermediate": {"layers": 24},
        "hidden": 16,
        "heads": 2,
        "key_value_heads": 1,
    }
    # everything but the embeddings shrinks 8x (half the depth, half each width), the embeddings 2x
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student.parameters())
    assert s_params < t_params / 3


@pytest.mark.parametrize("method", pruning.DEPTH_METHODS)
def test_the_ranking_is_deterministic_and_finds_a_block_that_does_nothing(method):
    """A block whose output is its input (its residual branches zeroed) has block influence 0 and
    skipping it changes nothing (KL 0): both methods rank it last, and the same way every time."""
    teacher = family("llama").eval()
    with torch.no_grad():
        block = teacher.model.layers[2]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    calib = batches(teacher)
    first = pruning.measure(teacher, calib, method=method, width=False, heads=False)
    again = pruning.measure(teacher, calib, method=method, width=False, heads=False)
    scores = first.layers["model.layers"]
    assert scores == again.layers["model.layers"]
    assert scores[2] == pytest.approx(0.0, abs=1e-6) and min(scores[i] for i in (0, 1, 3)) > 1e-4
    assert pruning.rank_layers(scores, 3) == [0, 1, 3]
    # student.layers=auto copies the same choice.
    student, kept = build_student(
        StudentConfig(layers="auto", num_layers=3, prune=PruneConfig(depth_importance=method)),
        teacher,
        type(teacher),
        {},
        lambda: calib,
    )
    assert kept == [0, 1, 3]
    for b in calib:
        torch.testing.assert_close(outputs(student, b), outputs(teacher, b), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, targets, message",
    [
        ("bert", {"layers": 6}, r"student.prune.layers: 6 is more than the teacher's 4"),
        ("bert", {"intermediate": 100}, r"student.prune.intermediate: 100 is more than the teacher's 64"),
        (
            "bert",
            {"heads": 0.5},
            r"student.prune.heads: .* heads cannot go alone; prune student.prune.hidden",
        ),
        (
            "t5",
            {"heads": 0.5},
            r"student.prune.heads: the heads of an encoder-decoder \(T5ForConditionalGeneration\) are not",
        ),
        ("bert", {"hidden": 24}, r"student.prune.hidden: .* must be a multiple of 16 .*, got 24"),
        ("bert", {"hidden": 48}, r"student.prune.hidden \(in heads\): 3 is more than the teacher's 2"),
        ("llama", {"hidden": 33}, r"student.prune.hidden: 33 is more than the teacher's 32"),
        ("gpt2", {"hidden": 0.5}, r"student.prune.hidden: a GPT2LMHeadModel block has no separate q/k/v/o"),
        ("marian", {"hidden": 0.5}, r"student.prune.hidden: pruning the hidden size of an encoder-decoder"),
        (
            "gpt2",
            {"heads": 0.5},
            r"student.prune.heads: a gpt2 model's head size is not its own setting.*; keep",
        ),
        ("gpt2", {"heads": 1}, None),
        ("llama", {"heads": 3}, r"student.prune.heads \(key/value groups\): 3 is more than the teacher's 2"),
        ("t5", {"layers": 5}, r"student.prune.layers: 5 is more than the teacher's 4"),
    ],
)
def test_impossible_targets_are_one_line(name, targets, message):
    teacher = family(name)
    if message is None:
        build_student(spec(**targets), teacher, type(teacher), {})  # keeps every head: fine
        return
    with pytest.raises(DistillError, match=message) as caught:
        build_student(spec(**targets), teacher, type(teacher), {})
    assert "\n" not in str(caught.value)


def test_prune_targets_are_checked_in_the_recipe():
    with pytest.raises(DistillError, match=r"student.prune.layers: a fraction in \(0, 1\] or a whole count"):
        PruneConfig(layers=2.5).check("student.prune")
    with pytest.raises(DistillError, match="student.layers: auto chooses the layers to copy"):
        StudentConfig(init="prune", layers="auto").check("student")
    with pytest.raises(DistillError, match="student.layers: a list of teacher layers or auto"):
        StudentConfig(layers="best").check("student")


# ----------------------------------------------------------------------------- whole runs


def _reproduces_the_report(recipe, out, tmp_path):
    """`distill evaluate` on the saved folders (plain from_pretrained) finds the report's figures."""
    from conftest import read_report

    from distill.cli import main

    again = tmp_path / "again"
    assert main(["evaluate", str(recipe), "--out", str(again)]) == 0
    first, second = read_report(out), read_report(again)
    for name in ("student", "baseline"):
        assert first["by_name"][name]["metrics"] == second["by_name"][name]["metrics"]
    return first


@pytest.mark.parametrize("task", ["classification", "causal_lm", "translation"])
def test_a_pruned_student_trains_ships_and_reproduces_the_report(task, tmp_path, request):
    import json

    from conftest import recipe_dict, translation_recipe, write_recipe
    from test_causal_lm import causal_recipe, save_causal

    from distill.cli import main

    out = tmp_path / "out"
    prune = {"layers": 0.5, "intermediate": 0.5, "calibration_examples": 32}
    if task == "classification":
        teacher = request.getfixturevalue("teacher_dir")
        raw = recipe_dict(teacher, request.getfixturevalue("data_csv"), out)
    elif task == "causal_lm":
        teacher = save_causal(tmp_path / "teacher", "llama")
        raw = causal_recipe(teacher, request.getfixturevalue("pairs_csv"), out)
    else:
        teacher = request.getfixturevalue("marian_dir")
        raw = translation_recipe(teacher, request.getfixturevalue("pairs_csv"), out)
    if task != "translation":  # an encoder-decoder's hidden size stays (refused)
        prune["hidden"] = 0.5
    raw["student"] = {"init": "prune", "prune": prune}
    raw.setdefault("train", {}).update(steps=3, baseline=True)
    raw.setdefault("eval", {}).update(latency=False)
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0

    results = json.loads((out / "results.json").read_text())
    built = results["student_init"]
    teacher_config = tf.AutoConfig.from_pretrained(teacher)
    student_config = tf.AutoConfig.from_pretrained(out / "student")
    if task == "translation":
        depth = teacher_config.decoder_layers
        assert student_config.decoder_layers == depth // 2
        assert student_config.decoder_ffn_dim == teacher_config.decoder_ffn_dim // 2
        assert student_config.encoder_layers == teacher_config.encoder_layers  # the encoder kept whole
    else:
        depth = teacher_config.num_hidden_layers
        assert student_config.num_hidden_layers == depth // 2
        assert student_config.intermediate_size == teacher_config.intermediate_size // 2
        assert student_config.hidden_size == teacher_config.hidden_size // 2 == built["pruned"]["hidden"]
    assert built["pruned"]["layers"] == results["student_layers_from_teacher"]
    assert len(built["importance"]["layer_scores"]) == 1
    assert len(next(iter(built["importance"]["layer_scores"].values()))) == depth
    assert built["importance"]["calibration_examples"] == 32
    card = (out / "student" / "README.md").read_text()
    assert "pruned from the teacher: layers" in card and "skip_kl" in card
    report = _reproduces_the_report(recipe, out, tmp_path)
    # The baseline starts from the same pruned student: the same size.
    assert report["by_name"]["baseline"]["parameters"] == report["by_name"]["student"]["parameters"]
    assert report["by_name"]["student"]["parameters"] < report["by_name"]["teacher"]["parameters"]


def test_killed_while_measuring_importance_resumes_to_the_same_students(tmp_path, data_csv):
    """kill -9 while the importance is measured (before anything of the student is written), then
    --resume: the same pruned student and baseline, bit for bit, as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    from conftest import recipe_dict, save_tiny_bert, write_recipe
    from test_faults import command, env, same_as_reference

    teacher = save_tiny_bert(tmp_path / "teacher")
    raw = recipe_dict(
        teacher,
        data_csv,
        tmp_path / "unused",
        teacher={"finetune": {"enabled": True, "steps": 3, "batch_size": 8, "learning_rate": 1e-3}},
        student={
            "init": "prune",
            # one example per forward pass: long enough to be killed in the middle of it
            "prune": {"intermediate": 0.5, "calibration_examples": 300, "calibration_batch_size": 1},
        },
        train={"steps": 3, "baseline": True},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    environment = {**env(tmp_path), "PYTHONUNBUFFERED": "1"}
    reference, out = tmp_path / "reference", tmp_path / "out"
    done = subprocess.run(
        command(recipe, reference), env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "student: pruned from the teacher" in done.stdout

    proc = subprocess.Popen(
        command(recipe, out), env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + 300
    marker = out / "teacher" / "distill_finetune.json"  # the teacher is done: importance comes next
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=60)
    assert "student: pruned" not in stdout, "killed after the importance was measured"
    assert not (out / "stages" / "distill").exists()
    resumed = subprocess.run(
        command(recipe, out, "--resume"), env=environment, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not same_as_reference(out, reference)


def test_validate_refuses_an_impossible_prune_in_one_line(tmp_path, teacher_dir, data_csv, capsys):
    from conftest import recipe_dict, write_recipe

    from distill.cli import main

    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(teacher_dir, data_csv, out))
    capsys.readouterr()
    for override, message in (
        (
            "student.prune.heads=0.5",
            "student.prune.heads: a bert model's head size is not its own setting",
        ),
        ("student.prune.layers=9", "student.prune.layers: 9 is more than the teacher's 4"),
        ("student.prune.layers=1", "student.prune: every target keeps all of the teacher"),
        (
            "student.prune.intermediate=2.5",
            "student.prune.intermediate: a fraction in (0, 1] or a whole count",
        ),
    ):
        assert main(["validate", str(recipe), "student.init=prune", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not out.exists()  # validate writes nothing


def test_pruned_in_bf16_under_accelerate_launch_as_in_one_process(tmp_path, data_csv):
    """Two processes under `accelerate launch --mixed_precision bf16` measure the same importance
    and build the same pruned student as one process does; the run trains and reports in bf16."""
    import json
    import subprocess
    import sys

    from conftest import read_report, recipe_dict, save_tiny_bert, write_recipe
    from test_faults import env

    raw = recipe_dict(
        save_tiny_bert(tmp_path / "teacher"),
        data_csv,
        tmp_path / "unused",
        student={"init": "prune", "prune": {"intermediate": 0.5, "hidden": 0.5, "calibration_examples": 24}},
        train={"steps": 2},
        eval={"latency": False},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "distill.cli", "run", str(recipe), f"output.dir={one}"]
    launched = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--mixed_precision", "bf16", "-m", "distill.cli", "run", str(recipe), f"output.dir={two}"),
        "train.batch_size=8",
    ]
    for cmd, extra in ((single, {"ACCELERATE_MIXED_PRECISION": "bf16"}), (launched, {})):
        done = subprocess.run(
            cmd, env={**env(tmp_path), **extra}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert (a["processes"], b["processes"]) == (1, 2)
    assert a["student_init"] == b["student_init"] and b["student_init"]["pruned"]["intermediate"] == {
        "layers": 32
    }
    assert b["student_init"]["pruned"]["hidden"] == 16  # half the channels, one of the two heads
    report = read_report(two)
    assert report["mixed_precision"] == "bf16"
    assert report["by_name"]["student"]["precision"] == "bf16 autocast"


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_skip_importance_reads_outputs_as_the_problem_type_does(problem):
    """One output (regression) has no softmax to compare, so skipping a block is scored by squared
    error; sigmoid outputs (multi-label) label by label. Each block's score is the mean over the
    examples of that divergence between the whole teacher and the teacher without the block."""
    import copy

    torch.manual_seed(0)
    labels = 1 if problem == "regression" else 3
    names = {i: f"LABEL_{i}" for i in range(labels)}
    config = tiny_bert_config(
        VOCAB, hidden_dropout_prob=0.0, num_labels=labels, problem_type=problem, id2label=names, label2id=None
    )
    teacher = tf.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # outputs of a few units, as a trained head gives
        teacher.classifier.weight.mul_(30)
    calib = batches(teacher)
    scores = pruning.measure(teacher, calib, method="skip_kl", width=False, heads=False).layers[
        "bert.encoder.layer"
    ]
    for index, score in enumerate(scores):
        skipped = copy.deepcopy(teacher)
        del skipped.bert.encoder.layer[index]
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in calib:
                ref, out = teacher(**batch).logits.double(), skipped(**batch).logits.double()
                if problem == "regression":
                    per = (ref - out).pow(2).sum(-1)
                else:
                    p, q = torch.sigmoid(ref), torch.sigmoid(out)
                    per = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1)
                total, count = total + per.sum().item(), count + len(per)
        assert score > 1e-7 and score == pytest.approx(total / count, rel=1e-4), index
