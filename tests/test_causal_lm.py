"""task: causal_lm — decoder-only language models (GPT-2, Llama, Qwen2) distilled token by token."""

import json
import math

import pytest
import torch
from conftest import make_seq2seq_tokenizer, write_recipe
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from distill.cli import main
from distill.config import DataConfig, LossConfig
from distill.loss_step import LossStep
from distill.tasks import causal_lm

FAMILIES = ["gpt2", "llama", "qwen2"]


def make_causal_tokenizer(folder):
    """A byte-level BPE tokenizer trained on the test words, as decoder-only families have (Qwen2's
    tokenizer class rebuilds it from its vocabulary and merges): it adds nothing to a text; pad 0,
    </s> 1 its end token."""
    from conftest import EN_FR
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(EN_FR) | set(EN_FR.values()))
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator([" ".join(words)] * 5 + words, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tok.model_max_length = 64
    if folder is not None:  # None: in memory only
        tok.save_pretrained(folder)
    return tok


def save_causal(folder, family: str, layers: int = 4, positions: int = 64):
    """A tiny decoder-only teacher with the word-level tokenizer (pad 0, </s> 1 as its end token)."""
    import transformers as tf

    tok = make_causal_tokenizer(folder)
    tok.chat_template = (  # a user turn and the assistant's cue, as instruction models have
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok.model_max_length = positions
    tok.save_pretrained(folder)
    ids = dict(vocab_size=len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=layers, n_head=2, n_positions=positions, **ids)
    elif family == "llama":
        config = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=positions,
            **ids,
        )
    else:
        config = tf.Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=positions,
            **ids,
        )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def causal_recipe(teacher, data, out, **sections):
    raw = {
        "description": "tiny causal LM recipe",
        "task": "causal_lm",
        "teacher": {"name_or_path": str(teacher)},
        "student": {"init": "copy_layers", "num_layers": 2},
        "data": {
            "files": {"train": str(data)},
            "prompt_column": "en",
            "completion_column": "fr",
            "validation_size": 20,
            "test_size": 20,
            "max_length": 24,
            "max_target_length": 24,
        },
        "train": {"steps": 6, "batch_size": 8, "learning_rate": 1e-2, "log_every": 2},
        "eval": {"batch_size": 8, "max_new_tokens": 8, "latency": False},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_only_completion_tokens_and_the_end_token_are_targets(tmp_path):
    from datasets import Dataset, DatasetDict

    tok = make_seq2seq_tokenizer(tmp_path / "tok")
    splits = DatasetDict(
        train=Dataset.from_dict({"prompt": ["one two"], "completion": ["un deux"]}),
        test=Dataset.from_dict({"prompt": ["one two three four"], "completion": ["un deux trois"]}),
    )
    cfg = DataConfig(files={"train": "x"}, max_length=3, max_target_length=3)
    out = causal_lm.tokenize(splits, tok, cfg)
    one, two, un, deux, trois, four = tok.convert_tokens_to_ids(["one", "two", "un", "deux", "trois", "four"])
    row = out["train"][0]
    assert row["input_ids"] == [
        one,
        two,
        un,
        deux,
        1,
    ]  # no end token after the prompt; one after the completion
    assert row["labels"] == [-100, un, deux, 1, -100]  # position t gives token t + 1, completion only
    test = out["test"][0]
    three = tok.convert_tokens_to_ids("three")
    assert test["prompt_ids"] == [two, three, four]  # the prompt's end kept
    assert test["input_ids"] == [two, three, four, un, deux, 1]  # completion cut to 2 + the end token
    assert test["reference"] == "un deux trois"
    batch = causal_lm.collator(tok)([out["test"][0], {**out["test"][0], "prompt_ids": [four]}])
    assert batch["prompt_ids"].tolist() == [[two, three, four], [0, 0, four]]  # prompts padded on the left
    assert batch["prompt_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_plain_text_makes_every_next_token_a_target(tmp_path):
    from datasets import Dataset, DatasetDict

    tok = make_seq2seq_tokenizer(tmp_path / "tok")
    splits = DatasetDict(train=Dataset.from_dict({"prompt": [""], "completion": ["one two"]}))
    row = causal_lm.tokenize(splits, tok, DataConfig(files={"train": "x"}))["train"][0]
    one, two = tok.convert_tokens_to_ids(["one", "two"])
    assert row["input_ids"] == [one, two, 1] and row["labels"] == [two, 1, -100]


def test_metrics_by_hand():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(
        models.WordLevel({"<pad>": 0, "</s>": 1, "un": 2, "deux": 3, "trois": 4}, unk_token="<pad>")
    )
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>")
    predictions = [
        [2.0, 2.0, 2, 3, -100],  # "un deux": exact
        [4.0, 3.0, 4, -100, -100],  # "trois" for "un trois"
    ]
    scores = causal_lm.compute_metrics(predictions, ["un deux", "un trois"], tok)
    assert scores["exact_match"] == 0.5
    assert scores["perplexity"] == pytest.approx(math.exp(6.0 / 5.0))
    import sacrebleu

    assert scores["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(["un deux", "trois"], [["un deux", "un trois"]]).score
    )


def test_chunked_token_kd_equals_the_whole_computation(tmp_path, pairs_csv):
    teacher = AutoModelForCausalLM.from_pretrained(save_causal(tmp_path / "t", "llama")).eval()
    student = AutoModelForCausalLM.from_pretrained(save_causal(tmp_path / "s", "llama", layers=2))
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    from datasets import Dataset, DatasetDict

    splits = DatasetDict(
        train=Dataset.from_dict(
            {"prompt": ["one two", "three", "four one two"], "completion": ["un", "trois deux", "un"]}
        )
    )
    rows = causal_lm.tokenize(splits, tok, DataConfig(files={"train": "x"}))["train"]
    batch = causal_lm.collator(tok)([rows[i] for i in range(3)])
    results = {}
    for chunk in (0, 3):
        for soft, beta in (("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)):
            student.zero_grad()
            step = LossStep(
                causal_lm,
                LossConfig(alpha=0.6, temperature=2.0, chunk_tokens=chunk, soft=soft, jsd_beta=beta),
                teacher=teacher,
            )
            out = step(student, batch)
            out["loss"].backward()
            grad = student.model.embed_tokens.weight.grad.clone()
            results[(chunk, soft)] = (out["loss"].item(), out["items"].item(), grad)
    for soft in ("kl", "reverse_kl", "jsd"):
        whole, chunked = results[(0, soft)], results[(3, soft)]
        expected = sum(
            len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in ("un", "trois deux", "un")
        )
        assert chunked[1] == whole[1] == expected  # the completions' tokens and their end tokens
        assert chunked[0] == pytest.approx(whole[0], rel=1e-5)
        assert torch.allclose(chunked[2], whole[2], atol=1e-6)


@pytest.mark.parametrize("init", ["copy_layers", "from_config"])
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_family_end_to_end(family, init, tmp_path, pairs_csv):
    """validate and a short run; the saved student generates with pipeline, and its greedy
    completions reproduce the report's exact match."""
    teacher = save_causal(tmp_path / "teacher", family)
    out = tmp_path / "out"
    depth = {"gpt2": "n_layer"}.get(family, "num_hidden_layers")
    student = (
        {"init": init, "num_layers": 2}
        if init == "copy_layers"
        else {"init": init, "config_overrides": {depth: 2}}
    )
    raw = causal_recipe(teacher, pairs_csv, out, student=student)
    raw["student"] = student
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe)]) == 0
    assert main(["run", str(recipe)]) == 0
    report = json.loads((out / "report.json").read_text())
    metrics = {m["name"]: m["metrics"] for m in report["models"]}
    assert set(metrics["student"]) == {"chrf", "exact_match", "perplexity"}
    assert all(math.isfinite(v) for m in metrics.values() for v in m.values())
    import sacrebleu

    from distill.config import load_recipe
    from distill.stages import prepare

    test = prepare(load_recipe(recipe, ["output.overwrite=true"])).splits["test"]
    references = [r.strip() for r in test["completion"]]

    def scores(folder):
        generate = pipeline("text-generation", model=str(folder))
        texts = [
            generate(p, max_new_tokens=8, do_sample=False, return_full_text=False)[0][
                "generated_text"
            ].strip()
            for p in test["prompt"]
        ]
        exact = sum(t == r for t, r in zip(texts, references, strict=True)) / len(test)
        return generate.model, exact, sacrebleu.corpus_chrf(texts, [references]).score

    model, exact, chrf = scores(out / "student")
    assert model.config.num_hidden_layers == 2
    assert (exact, chrf) == pytest.approx((metrics["student"]["exact_match"], metrics["student"]["chrf"]))
    _, exact, chrf = scores(teacher)
    assert chrf > 0  # untrained, yet not empty: the comparison is not 0 == 0 for both
    assert (exact, chrf) == pytest.approx((metrics["teacher"]["exact_match"], metrics["teacher"]["chrf"]))


def test_sampled_completions_are_laid_out_as_training_batches(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = save_causal(tmp_path / "t", "llama")
    model = AutoModelForCausalLM.from_pretrained(folder).train()
    # A chat model's generation config narrows sampling; on-policy samples ignore it.
    model.generation_config.update(top_k=1, repetition_penalty=100.0, do_sample=True)
    tok = AutoTokenizer.from_pretrained(folder)
    prompts = ["one two", "three", "four five six", "seven"]
    splits = DatasetDict(train=Dataset.from_dict({"prompt": prompts, "completion": ["un", "x", "y", "z"]}))
    rows = causal_lm.tokenize(splits, tok, DataConfig(files={"train": "x"}))["train"]
    collate = causal_lm.collator(tok)
    seeds = causal_lm.row_seeds(7, 3, [0, 1, 2, 3])
    assert len(set(seeds)) == 4 and seeds != causal_lm.row_seeds(7, 4, [0, 1, 2, 3])
    batch = collate([rows[i] for i in range(4)])
    sampled = causal_lm.sample_completions(model, batch, seeds=seeds, temperature=1.0, max_new_tokens=5)
    assert model.training  # left as it was
    assert model.generation_config.top_k == 1  # and its generation config too
    news = []
    for i in range(4):
        prompt = rows[i]["prompt_ids"]
        n = int(sampled["attention_mask"][i].sum())
        ids, labels = sampled["input_ids"][i, :n].tolist(), sampled["labels"][i, :n].tolist()
        assert ids[: len(prompt)] == prompt
        new = ids[len(prompt) :]
        assert 1 <= len(new) <= 5 and (1 not in new[:-1])  # stops at the first end token
        assert labels == [-100] * (len(prompt) - 1) + new + [-100]
        assert (sampled["labels"][i, n:] == -100).all()
        news.append(new)
    # Sampled, not the greedy completions that top_k=1 (and the model's penalty) would give.
    greedy = model.generate(
        input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], do_sample=False, max_new_tokens=5
    )
    width = batch["prompt_ids"].shape[1]
    assert any(new != greedy[i, width:].tolist()[: len(new)] for i, new in enumerate(news))
    # A row's sample depends on its seed only: alone, or beside other rows, it is the same.
    for i in (0, 2):
        alone = causal_lm.sample_completions(
            model, collate([rows[i]]), seeds=[seeds[i]], temperature=1.0, max_new_tokens=5
        )
        n = int(alone["attention_mask"][0].sum())
        assert alone["input_ids"][0, :n].tolist()[len(rows[i]["prompt_ids"]) :] == news[i]
    other = causal_lm.sample_completions(
        model, batch, seeds=causal_lm.row_seeds(8, 3, [0, 1, 2, 3]), temperature=1.0, max_new_tokens=5
    )
    assert not torch.equal(other["input_ids"], sampled["input_ids"])


def test_sampling_by_gumbel_noise_follows_the_softmax_at_the_temperature():
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]])
    for temperature in (1.0, 0.5):
        picks = torch.zeros(4)
        for seed in range(4000):
            processor = causal_lm._RowGumbel([seed], temperature, torch.device("cpu"))
            picks[processor(None, logits).argmax()] += 1
        expected = torch.softmax(logits[0] / temperature, -1)
        assert torch.allclose(picks / 4000, expected, atol=0.03), (temperature, picks / 4000, expected)


def test_on_policy_batches_are_deterministic_and_change_the_student(tmp_path, pairs_csv, monkeypatch):
    from safetensors.torch import load_file

    teacher = save_causal(tmp_path / "teacher", "llama")
    calls = []
    real = causal_lm.sample_completions
    monkeypatch.setattr(causal_lm, "sample_completions", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(name, on_policy):
        raw = causal_recipe(teacher, pairs_csv, tmp_path / name, loss={"on_policy": on_policy})
        assert main(["run", str(write_recipe(tmp_path / f"{name}.yaml", raw))]) == 0
        return load_file(str(tmp_path / name / "student" / "model.safetensors"))

    a = run("a", 0.5)
    sampled = len(calls)
    assert 0 < sampled < 6  # half of the 6 steps' batches, give or take: drawn, not every one
    b = run("b", 0.5)
    assert len(calls) == 2 * sampled
    c = run("c", 0.0)
    assert len(calls) == 2 * sampled
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_on_policy_needs_prompts_and_an_online_teacher(tmp_path, pairs_csv, capsys):
    teacher = save_causal(tmp_path / "teacher", "gpt2")
    raw = causal_recipe(teacher, pairs_csv, tmp_path / "out", loss={"on_policy": 0.5})
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["validate", str(recipe), "teacher.cache=true"]) == 2
    assert "loss.on_policy: the teacher scores the student's own samples" in capsys.readouterr().err
    assert main(["validate", str(recipe), "data.prompt_column=", "data.completion_column="]) == 2
    assert "loss.on_policy: the student completes prompts; set data.prompt_column" in capsys.readouterr().err


def test_an_on_policy_run_killed_mid_stage_resumes_to_the_same_weights(tmp_path, pairs_csv):
    from safetensors.torch import load_file
    from test_faults import killed_mid_stage_and_resumed

    teacher = save_causal(tmp_path / "teacher", "llama")
    raw = causal_recipe(
        teacher,
        pairs_csv,
        tmp_path / "unused",
        loss={"on_policy": 0.5},
        train={"steps": 8, "checkpoint_every": 1, "keep_checkpoints": 2, "log_every": 3},
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    reference, out = killed_mid_stage_and_resumed(recipe, tmp_path, "stages/distill/checkpoints/step_4")
    a = load_file(str(reference / "student" / "model.safetensors"))
    b = load_file(str(out / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads((d / "results.json").read_text())["history"] for d in (reference, out)]
    assert history[0] == history[1]


def test_sequence_level_kd_trains_on_the_teachers_completions(tmp_path, pairs_csv):
    from datasets import load_from_disk  # noqa: F401  (the store is read through distill itself)

    from distill import seqkd
    from distill.config import load_recipe
    from distill.stages import prepare

    teacher = save_causal(tmp_path / "teacher", "qwen2")
    raw = causal_recipe(
        teacher, pairs_csv, tmp_path / "out", loss={"sequence_kd": "mix", "sequence_kd_beams": 2}
    )
    recipe = write_recipe(tmp_path / "r.yaml", raw)
    assert main(["run", str(recipe)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["train_examples"] == 2 * 260  # the references and the teacher's completions
    plan = prepare(load_recipe(recipe, ["output.overwrite=true"]))
    train = causal_lm.tokenize(plan.splits, plan.tokenizer, plan.cfg.data)["train"]
    from accelerate import Accelerator

    from distill.teachers import pseudo_settings

    pseudo = seqkd.pseudo_targets(
        Accelerator(cpu=True),
        plan.teacher,
        train,
        causal_lm.collator(plan.tokenizer),
        tmp_path / "out" / "pseudo_targets",  # the run's store: read back, not generated again
        settings=pseudo_settings(plan.cfg),
        batch_size=8,
        task=causal_lm,
    )
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    for i in (0, 100):
        prompt = train[i]["prompt_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]), num_beams=2, max_new_tokens=24, do_sample=False, pad_token_id=0
            )
        new = out[0, len(prompt) :].tolist()
        new = new[: new.index(1) + 1] if 1 in new else [t for t in new if t != 0] + [1]  # cut at </s>
        assert pseudo[i]["input_ids"] == prompt + new
        assert pseudo[i]["labels"] == [-100] * (len(prompt) - 1) + new + [-100]
