"""Objects passed from Python (a model, a tokenizer, a data set, a custom loss term) in place of a
recipe's paths (and, for a loss term, beside its built-in terms).

Each is named in the resolved recipe by its kind and fingerprint, ``memory:teacher:3f2a...``:
``config.yaml`` records what the run was given, and a resume given other objects is refused as a
changed setting, naming it. A model is saved once, with its tokenizer, into a private temporary
folder, and every load reads that folder with the ordinary ``from_pretrained`` (the caller's object
is never changed, and what the run loads is exactly what a folder would give); the folder is
removed when the call that passed it returns (a process killed before that leaves it behind; the
next process to save one removes the folders of processes no longer running). A data set is used as it is. The fingerprint of a
model is that of the files it saves to (weights, config, tokenizer), of a data set its content:
every split's features and rows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distill.errors import DistillError

PREFIX = "memory:"

_folders: dict[str, str] = {}  # reference -> the temporary folder a model was saved to
_datasets: dict[str, Any] = {}  # reference -> the DatasetDict
_terms: dict[str, Any] = {}  # reference -> the LossTerm


def is_reference(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def add_model(role: str, model: Any, tokenizer: Any) -> str:
    """Save ``model`` and ``tokenizer`` into a private folder; return the reference naming them."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise DistillError(f"{role}=: a transformers PreTrainedModel, not a {type(model).__name__}")
    if not hasattr(tokenizer, "save_pretrained") or not hasattr(tokenizer, "convert_tokens_to_ids"):
        raise DistillError(f"tokenizer=: a transformers tokenizer, not a {type(tokenizer).__name__}")
    folder = private_folder(role)
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    reference = f"{PREFIX}{role}:{_folder_fingerprint(Path(folder))}"
    if reference in _folders:  # the same object passed twice: one folder is enough
        shutil.rmtree(folder, ignore_errors=True)
    else:
        _folders[reference] = folder
    return reference


def private_folder(role: str) -> str:
    """A new private temporary folder named by ``role`` and this process, after removing those of
    earlier processes that are no longer running (killed before they could remove their own)."""
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"distill-{role}-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"distill-{role}-{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def add_data(data: Any) -> str:
    """Keep ``data`` (a Dataset: the train split; or a DatasetDict); return its reference."""
    from datasets import Dataset, DatasetDict

    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    if not isinstance(data, DatasetDict) or not all(isinstance(s, Dataset) for s in data.values()):
        raise DistillError(f"data=: a datasets Dataset or DatasetDict, not a {type(data).__name__}")
    reference = f"{PREFIX}data:{data_fingerprint(data)}"
    _datasets[reference] = data
    return reference


def add_loss_term(term: Any) -> str:
    """Keep a :class:`~distill.loss_step.LossTerm`; return its reference, named by the term's name
    and a fingerprint of its weight, flags and code (the function's bytecode and constants; what a
    closure or an object holds is not seen)."""
    from distill.loss_step import LOGGED_TERMS, LossTerm

    if not isinstance(term, LossTerm):
        raise DistillError(f"loss_terms=: distill.LossTerm instances, not a {type(term).__name__}")
    if not isinstance(term.name, str) or not term.name.isidentifier():
        raise DistillError(
            f"loss_terms=: a term's name is an identifier (letters, digits, _), not {term.name!r}"
        )
    if term.name in LOGGED_TERMS or term.name == "grad_norm":
        raise DistillError(f"loss_terms=: '{term.name}' is a built-in term's name; choose another")
    if not callable(term.fn):
        raise DistillError(f"loss_terms=: the term '{term.name}' has fn={term.fn!r}, which is not callable")
    if (
        isinstance(term.weight, bool)
        or not isinstance(term.weight, (int, float))
        or not term.weight == term.weight
    ):
        raise DistillError(f"loss_terms=: the term '{term.name}' has weight {term.weight!r}; a number")
    digest = hashlib.sha256(f"{term.name}\0{float(term.weight)!r}\0{bool(term.hidden_states)}\0".encode())
    digest.update(_code_fingerprint(term.fn).encode())
    reference = f"{PREFIX}loss_term:{term.name}:{digest.hexdigest()[:16]}"
    _terms[reference] = term
    return reference


def loss_term(reference: str) -> Any:
    if reference in _terms:
        return _terms[reference]
    raise DistillError(_missing(reference))


def _code_fingerprint(fn: Any) -> str:
    """The code a callable runs: a function's (or a method's, or an object's ``__call__``) bytecode,
    constants and names, recursively through nested code; else its type's qualified name."""
    import functools

    if isinstance(fn, functools.partial):
        return f"partial({_code_fingerprint(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:  # an object with __call__
        code = getattr(vars(type(fn)).get("__call__"), "__code__", None)
    if code is None:
        return f"{type(fn).__module__}.{type(fn).__qualname__}"

    def walk(c: Any) -> str:
        consts = [walk(k) if hasattr(k, "co_code") else repr(k) for k in c.co_consts]
        return f"{c.co_code.hex()}|{consts}|{c.co_names}|{c.co_varnames}"

    return walk(code)


def folder(reference: str) -> str:
    """The folder a model reference was saved to, or a one-line error saying how to pass it again."""
    if reference in _folders:
        return _folders[reference]
    raise DistillError(_missing(reference))


def dataset(reference: str) -> Any:
    if reference in _datasets:
        return _datasets[reference]
    raise DistillError(_missing(reference))


def release(references: list[str]) -> None:
    for reference in references:
        path = _folders.pop(reference, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        _datasets.pop(reference, None)
        _terms.pop(reference, None)


def _missing(reference: str) -> str:
    role = reference[len(PREFIX) :].partition(":")[0]
    if role == "loss_term":
        return (
            f"'{reference}' names a loss term passed from Python, which this call was not given; pass "
            "the same term again (distill.run(..., loss_terms=[...])); one with other code or weight is another term"
        )
    return (
        f"'{reference}' names a {role} passed from Python, which this call was not given; pass the same "
        f"object again (distill.run(..., {role}=...)); one with other weights or content is another {role}"
    )


def _folder_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def data_fingerprint(data: Any) -> str:
    """Every split's name, features and rows (in order), as Arrow writes them."""
    import pyarrow as pa

    digest = hashlib.sha256()
    for name in sorted(data):
        split = data[name]
        digest.update(f"{name}\0{split.features!r}\0{len(split)}\0".encode())
        for table in split.with_format("arrow").iter(batch_size=4096):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as writer:
                writer.write_table(table.replace_schema_metadata(None))
            digest.update(sink.getvalue())
    return digest.hexdigest()[:16]
