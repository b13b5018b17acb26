"""distill: knowledge distillation of Transformer models.

    import distill
    result = distill.run("quickstart", overrides=["train.steps=100"])
    result.scores["student"]

``run``, ``validate`` and ``evaluate`` take a recipe (a name, a path, a dict or a
``RecipeConfig``) and, in place of its paths, objects in memory: ``teacher=`` (with its
``tokenizer=``), ``student=`` and ``data=``; ``run`` also takes ``callbacks=`` and ``loss_terms=``
(:class:`LossTerm`, a loss term of your own). Errors raise ``DistillError`` with the command's
one-line message. Everything not in ``__all__`` is internal.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "DistillError",
    "LossTerm",
    "RecipeConfig",
    "Result",
    "Validation",
    "evaluate",
    "recipe_config",
    "run",
    "validate",
]

_API = {"run", "validate", "evaluate", "recipe_config", "Result", "Validation"}


def __getattr__(name: str) -> Any:  # imported on first use: `distill --version` stays fast
    if name in _API:
        from distill import api

        return getattr(api, name)
    if name == "Callback":
        from distill.callbacks import Callback

        return Callback
    if name == "LossTerm":
        from distill.loss_step import LossTerm

        return LossTerm
    if name == "RecipeConfig":
        from distill.config import RecipeConfig

        return RecipeConfig
    if name == "DistillError":
        from distill.errors import DistillError

        return DistillError
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
