"""Command line: ``distill run | evaluate | validate | recipes``.

Errors in the user's input print one line, ``distill: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from distill.errors import DistillError

RECIPE_DIRS = (Path.cwd() / "recipes", Path(__file__).resolve().parent.parent / "recipes")


def find_recipe(name: str) -> Path:
    """A recipe by path, or by name (``quickstart``) from ``./recipes`` or the project's recipes."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in RECIPE_DIRS:
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(p.stem for p in _recipe_files())) or "none found"
    raise DistillError(f"recipe not found: {name} (known recipes: {known})")


def _recipe_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in RECIPE_DIRS:
        for path in sorted(folder.glob("*.yaml")):
            seen.setdefault(path.name, path)
    return list(seen.values())


class Stop(BaseException):
    """A signal that asks the process to stop (SIGTERM from a scheduler, `timeout` or torchrun)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_stopping: list[int] = []  # the signal that asked to stop, once one has


def _on_signal(signum: int, frame: object) -> None:
    _stopping.append(signum)
    raise Stop(signum)


def catch_signals() -> None:
    """SIGTERM and SIGINT stop the run where it is: every write is atomic, so what is on disk is a
    resumable state; the CLI then says so in one line."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (a notebook, a test runner's worker)
            pass


def cmd_run(args: argparse.Namespace) -> int:
    from distill.config import load_recipe
    from distill.run import run

    cfg = load_recipe(find_recipe(args.recipe), args.overrides)
    run(cfg, resume=args.resume)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from distill.compare import evaluate_saved
    from distill.config import load_recipe

    cfg = load_recipe(find_recipe(args.recipe), args.overrides)
    evaluate_saved(cfg, teacher=args.teacher, students=args.student, baselines=args.baseline, out=args.out)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from distill.config import load_recipe
    from distill.modeling import num_layers
    from distill.plan import prepare

    cfg = load_recipe(find_recipe(args.recipe), args.overrides)
    plan = prepare(cfg)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in plan.splits.items())
    print(f"recipe OK: {cfg.description or args.recipe}")
    source = (
        cfg.teacher.name_or_path
        or f"built from teacher.architecture, tokenizer of {len(plan.tokenizer)} pieces"
    )
    print(
        f"  teacher   {source} ({plan.teacher_config.model_type}, {num_layers(plan.teacher_config)} layers)"
    )
    print(
        f"  student   {cfg.student.init}" + (f", layers {cfg.student.layers}" if cfg.student.layers else "")
    )
    if plan.label_names is not None:
        print(f"  labels    {plan.label_names}")
    print(f"  splits    {sizes}")
    print(f"  tokenizer {type(plan.tokenizer).__name__}, {len(plan.tokenizer)} tokens")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from distill import recipe_yaml

    files = _recipe_files()
    if not files:
        print("no recipes found in ./recipes")
        return 0
    width = max(len(p.stem) for p in files)
    for path in files:
        try:
            raw = recipe_yaml.load(path.read_text(encoding="utf-8"), path.name)
            description = raw.get("description", "") if isinstance(raw, dict) else "(not a recipe)"
        except DistillError as e:
            description = f"({e})"
        print(f"{path.stem.ljust(width)}  {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation of Transformer models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a recipe: fine-tune the teacher if asked, distil, evaluate")
    p_run.add_argument("recipe", help="recipe file or name (see `distill recipes`)")
    p_run.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=100")
    p_run.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output.dir"
    )
    p_run.set_defaults(func=cmd_run)
    p_eval = sub.add_parser(
        "evaluate",
        help="compare a teacher with students and baselines on a recipe's test split (report.json/.md/.png)",
    )
    p_eval.add_argument("recipe", help="recipe whose data (test split) and eval settings are used")
    p_eval.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. eval.latency=false")
    p_eval.add_argument("--teacher", help="model folder, output folder or hub id (default: the recipe's)")
    p_eval.add_argument(
        "--student", action="append", default=[], help="a student to compare (repeat for several)"
    )
    p_eval.add_argument(
        "--baseline", action="append", default=[], help="a no-teacher baseline to compare (repeatable)"
    )
    p_eval.add_argument("--out", help="folder for the report (default: the recipe's output.dir)")
    p_eval.set_defaults(func=cmd_evaluate)
    p_val = sub.add_parser(
        "validate", help="check a recipe, its data, labels and tokenizers without training"
    )
    p_val.add_argument("recipe")
    p_val.add_argument("overrides", nargs="*")
    p_val.set_defaults(func=cmd_validate)
    p_list = sub.add_parser("recipes", help="list the known recipes")
    p_list.set_defaults(func=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    _stopping.clear()
    catch_signals()
    try:
        return _main(argv)
    except DistillError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, Stop) as e:
        signum = e.signum if isinstance(e, Stop) else signal.SIGINT
        _say_stopped(signum, argv if argv is not None else sys.argv[1:])
        return 128 + signum
    except Exception as e:
        from distill.atomic import disk_problem

        cause = disk_problem(e)
        if cause is not None and not _stopping:  # a write the library did not expect to fail
            where = getattr(e, "filename", None)
            print(f"distill: error: {cause}" + (f": {where}" if where else ""), file=sys.stderr)
            return 2
        # Under torchrun a stopped process's peers see their collectives fail: a consequence of
        # the signal, not a second error.
        if not _stopping:
            raise
        _say_stopped(_stopping[0], argv if argv is not None else sys.argv[1:])
        return 128 + _stopping[0]


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`evaluate R --student S eval.latency=false`).
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    logging.basicConfig(level=logging.WARNING, format="distill: %(message)s")
    logging.getLogger("distill").setLevel(logging.INFO)
    from distill.run import quiet_libraries

    quiet_libraries()
    return args.func(args)


def _say_stopped(signum: int, argv: list[str]) -> None:
    """One line, from the main process only (under torchrun every rank gets the signal)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    name = signal.Signals(signum).name
    if argv and argv[0] == "run":
        again = " ".join(["distill", *argv] + ([] if "--resume" in argv else ["--resume"]))
        advice = f"`{again}` finishes it"
    else:
        advice = "nothing was written"
    print(f"\ndistill: stopped by {name}; {advice}", file=sys.stderr)


def entry() -> None:
    """The ``distill`` command. A run stopped by a signal leaves without the interpreter's
    finalization: everything it keeps is already written atomically, and finalizing while library
    threads (data loading, logging) still run can abort the process instead of exiting 128 + signal."""
    try:
        code = main()
    except BrokenPipeError:  # `distill recipes | head`: the reader left; no traceback (Python's advice)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if code > 128:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
