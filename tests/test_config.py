import pytest
import yaml

from distill.config import check_against_teacher, dump_yaml, from_dict, load_recipe, parse_override
from distill.errors import DistillError

BASE = {
    "teacher": {"name_or_path": "some/teacher"},
    "data": {"files": {"train": "x.csv"}},
    "output": {"dir": "out"},
}


def recipe(tmp_path, extra=None):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for section, values in (extra or {}).items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_and_types(tmp_path):
    cfg = load_recipe(recipe(tmp_path))
    assert cfg.loss.temperature == 2.0 and cfg.loss.alpha == 0.5
    assert cfg.student.init == "copy_layers"
    assert cfg.data.files == {"train": "x.csv"}


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_recipe(
        recipe(tmp_path),
        [
            "loss.alpha=0.7",
            "train.steps=12",
            "student.layers=[0,5]",
            "teacher.finetune.enabled=true",
            "loss.layer_map={0: 1}",
            "train.learning_rate=2e-3",  # YAML 1.1 reads this as a string
        ],
    )
    assert cfg.loss.alpha == 0.7
    assert cfg.train.steps == 12
    assert cfg.student.layers == [0, 5]
    assert cfg.teacher.finetune.enabled is True
    assert cfg.loss.layer_map == {0: 1}
    assert cfg.train.learning_rate == 0.002


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(
        DistillError, match=r"unknown key 'loss.temprature' \(did you mean 'loss.temperature'\?\)"
    ):
        load_recipe(recipe(tmp_path), ["loss.temprature=3"])
    with pytest.raises(DistillError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_recipe(recipe(tmp_path, {"trian": {"steps": 3}}))


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.temperature=0", r"loss.temperature: must be in \[0.001, 1000\]"),
        ("loss.temperature=-1", r"loss.temperature: must be in \[0.001, 1000\]"),
        ("loss.temperature=.inf", r"loss.temperature: expected a finite number, got inf"),
        ("loss.temperature=5000", r"loss.temperature: must be in \[0.001, 1000\]"),
        ("loss.alpha=.nan", r"loss.alpha: expected a finite number"),
        ("train.learning_rate=-.inf", r"train.learning_rate: expected a finite number"),
        ("train.seed=-1", r"train.seed: a seed is a whole number from 0 to 4294967295"),
        ("data.seed=4294967296", r"data.seed: a seed is a whole number"),
        ("teacher.finetune.seed=-3", r"teacher.finetune.seed: a seed is a whole number"),
        ("eval.latency_threads=5000", r"eval.latency_threads: must be in \[0, 1024\]"),
        ("loss.alpha=1.5", r"loss.alpha: must be in \[0, 1\]"),
        ("loss.alpha=-0.1", r"loss.alpha: must be in \[0, 1\]"),
        ("train.steps=ten", r"train.steps: expected an integer, got 'ten'"),
        ("train.steps=2.5", r"train.steps: expected an integer"),
        ("train.learning_rate=fast", r"train.learning_rate: expected a number, got 'fast'"),
        ("teacher.finetune.enabled=maybe", r"teacher.finetune.enabled: expected true or false"),
        (
            "loss.soft=kll",
            r"loss.soft: must be one of kl, reverse_kl, jsd, mse; got 'kll' \(did you mean 'kl'\?\)",
        ),
        ("train.mixed_precision=fp8", r"train.mixed_precision: must be one of"),
        ("student.layers=[1,1]", r"student.layers: .* names a layer twice"),
        ("loss.hidden_weight=1.0", r"loss.hidden: choose mse or cosine"),
        ("data.validation_size=2.5", r"data.validation_size"),
        ("output.dir=", r"output.dir: required"),
    ],
)
def test_bad_values_fail_at_load_with_the_key(tmp_path, override, message):
    with pytest.raises(DistillError, match=message):
        load_recipe(recipe(tmp_path), [override])


def test_error_is_one_line(tmp_path):
    with pytest.raises(DistillError) as info:
        load_recipe(recipe(tmp_path), ["loss.alpha=2"])
    assert "\n" not in str(info.value)


def test_layer_indices_checked_against_teacher(tmp_path):
    cfg = load_recipe(recipe(tmp_path), ["student.layers=[0,6]"])
    with pytest.raises(
        DistillError, match=r"student.layers: layer 6 does not exist; the teacher has 6 layers \(0-5\)"
    ):
        check_against_teacher(cfg, num_teacher_layers=6, num_student_layers=2)
    check_against_teacher(cfg, num_teacher_layers=7, num_student_layers=2)
    cfg = load_recipe(recipe(tmp_path), ["loss.layer_map={0: 9}"])
    with pytest.raises(DistillError, match=r"loss.layer_map: teacher layer 9"):
        check_against_teacher(cfg, num_teacher_layers=6, num_student_layers=2)
    cfg = load_recipe(recipe(tmp_path), ["student.num_layers=8"])
    with pytest.raises(DistillError, match=r"student.num_layers: 8 is more than the teacher's 6"):
        check_against_teacher(cfg, num_teacher_layers=6, num_student_layers=8)


def test_override_syntax_errors():
    with pytest.raises(DistillError, match="expected key=value"):
        parse_override("loss.alpha")
    assert parse_override("data.text_column=tweet") == ("data.text_column", "tweet")


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(DistillError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(DistillError, match="not valid YAML"):
        load_recipe(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_recipe(recipe(tmp_path), ["loss.alpha=0.25", "student.layers=[0, 3]"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "train:\n  steps: 2\n  steps: 6\n",
            r"r\.yaml: key 'train\.steps' is given twice \(lines 2 and 3\); keep one of them$",
        ),
        ("output:\n  dir: a\noutput:\n  dir: b\n", r"key 'output' is given twice \(lines 1 and 3\)"),
        ("data:\n  files:\n    train: a.csv\n    train: b.csv\n", r"key 'data\.files\.train' is given twice"),
    ],
)
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)  # refused while reading, before any other check
    with pytest.raises(DistillError, match=message) as caught:
        load_recipe(path)
    assert "\n" not in str(caught.value)


def test_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1's no/yes/on/off would arrive as booleans: `train.mixed_precision=no` must be 'no'."""
    path = recipe(tmp_path)
    path.write_text(path.read_text() + "train:\n  mixed_precision: no\n  baseline: True\n")
    cfg = load_recipe(path, ["eval.latency=false"])
    assert (cfg.train.mixed_precision, cfg.train.baseline, cfg.eval.latency) == ("no", True, False)
    assert load_recipe(recipe(tmp_path), ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(DistillError, match="train.baseline: expected true or false, got 'yes'"):
        load_recipe(recipe(tmp_path), ["train.baseline=yes"])
