"""Command line: ``distill run | evaluate | validate | recipes``.

Errors in the user's input print one line, ``distill: error: ...``, and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from distill.errors import DistillError

_PACKAGE = Path(__file__).resolve().parent


def _recipe_dirs() -> list[Path]:
    """Where recipes are found by name: ``./recipes``, then the ones shipped in the package
    (``distill/recipes`` of an installed wheel, ``recipes/`` of a checkout)."""
    dirs = [Path.cwd() / "recipes", _PACKAGE / "recipes"]
    if (_PACKAGE.parent / "pyproject.toml").is_file():  # a checkout (or an editable install of one)
        dirs.append(_PACKAGE.parent / "recipes")
    return dirs


def find_recipe(name: str) -> Path:
    """A recipe by path, or by name (``quickstart``) from ``./recipes`` or the project's recipes."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in _recipe_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(p.stem for p in _recipe_files())) or "none found"
    raise DistillError(f"recipe not found: {name} (known recipes: {known})")


def _recipe_files() -> list[Path]:
    seen: dict[str, Path] = {}
    for folder in _recipe_dirs():
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


_thread_disk_problems: list[str] = []  # what a library thread's write failed on


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """A library thread (TensorBoard's event writer, say) that fails on a full or read-only disk
    prints no traceback: the main thread meets the same failure on its next write and says it in
    one line. Any other failure in a thread is a bug, and keeps its traceback."""
    from distill.atomic import disk_problem

    cause = disk_problem(args.exc_value) if args.exc_value is not None else None
    if cause is None:
        _default_thread_excepthook(args)
        return
    _thread_disk_problems.append(cause)


_default_thread_excepthook = threading.excepthook


def cmd_run(args: argparse.Namespace) -> int:
    from distill.api import run

    run(find_recipe(args.recipe), resume=args.resume, overrides=args.overrides)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from distill.compare import evaluate_saved
    from distill.config import load_recipe

    cfg = load_recipe(find_recipe(args.recipe), args.overrides)
    evaluate_saved(cfg, teacher=args.teacher, students=args.student, baselines=args.baseline, out=args.out)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from distill.api import validate

    checked = validate(find_recipe(args.recipe), resume=args.resume, overrides=args.overrides)
    cfg = checked.config
    sizes = ", ".join(f"{name} {n}" for name, n in checked.splits.items())
    print(f"recipe OK: {cfg.description or args.recipe}")
    print(f"  teacher   {checked.teacher} ({checked.teacher_type}, {checked.teacher_layers} layers)")
    print(
        f"  student   {cfg.student.init}" + (f", layers {cfg.student.layers}" if cfg.student.layers else "")
    )
    if checked.labels is not None:
        print(f"  labels    {checked.labels}")
    print(f"  splits    {sizes}")
    print(f"  tokenizer {checked.tokenizer}, {checked.tokenizer_size} tokens")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from distill import recipe_yaml

    files = _recipe_files()
    if not files:
        print("no recipes found in " + ", ".join(str(d) for d in _recipe_dirs()))
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


def cmd_copy(args: argparse.Namespace) -> int:
    """A recipe written out for editing: ``distill copy quickstart`` -> ``./quickstart.yaml``."""
    source = find_recipe(args.recipe)
    dest = Path(args.dest) if args.dest else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise DistillError(f"{dest} exists; give another destination (distill copy {args.recipe} PATH)")
    from distill import atomic

    atomic.write_text(dest, source.read_text(encoding="utf-8"))
    print(f"wrote {dest} (from {source}); run it with `distill run {dest}`")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Every recipe key with its type, default and comment; with a recipe, its values beside them."""
    from distill.config import load_recipe
    from distill.recipe_keys import format_keys, recipe_keys

    cfg = load_recipe(find_recipe(args.recipe), args.overrides) if args.recipe else None
    keys = [k for k in recipe_keys() if not args.section or k.name.startswith(f"{args.section}.")]
    if not keys:
        raise DistillError(f"no recipe section '{args.section}'")
    print(format_keys(keys, cfg))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill", description="Knowledge distillation of Transformer models."
    )
    parser.add_argument("--version", action="version", version=f"distill {_version()}")
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
    p_val.add_argument("--resume", action="store_true", help="check as `run --resume` would")
    p_val.set_defaults(func=cmd_validate)
    p_list = sub.add_parser("recipes", help="list the known recipes")
    p_list.set_defaults(func=cmd_recipes)
    p_copy = sub.add_parser("copy", help="write a recipe out for editing (default: ./NAME.yaml)")
    p_copy.add_argument("recipe", help="recipe name or file (see `distill recipes`)")
    p_copy.add_argument("dest", nargs="?", help="file or folder to write it to")
    p_copy.set_defaults(func=cmd_copy)
    p_keys = sub.add_parser("keys", help="every recipe key with its type, default and comment")
    p_keys.add_argument("recipe", nargs="?", help="also show this recipe's values")
    p_keys.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to the recipe")
    p_keys.add_argument(
        "--section", help="only this section (teacher, student, data, loss, train, eval, output)"
    )
    p_keys.set_defaults(func=cmd_keys)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distill")
    except PackageNotFoundError:  # run from a checkout without installing it
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    _stopping.clear()
    _thread_disk_problems.clear()
    catch_signals()
    threading.excepthook = _thread_excepthook
    try:
        code = _main(argv)
        if _thread_disk_problems:  # the main thread finished its own writes; a log did not
            print(
                f"distill: warning: a background write failed ({_thread_disk_problems[0]}); the "
                "TensorBoard logs may be incomplete",
                file=sys.stderr,
            )
        return code
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
    # Under torchrun / accelerate launch every rank reads the same data and says the same things:
    # only rank 0 speaks (as Accelerate's own logger does); errors still come from each rank.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    logging.getLogger("distill").setLevel(logging.INFO if main_rank else logging.ERROR)
    from distill.stages import quiet_libraries

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
