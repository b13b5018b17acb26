"""Reading recipe YAML strictly: a key given twice is an error, and only ``true``/``false`` are booleans.

PyYAML keeps the last of two equal keys without a word, so ``steps: 2`` followed by ``steps: 6`` in
one section would train 6 steps silently. And YAML 1.1 reads ``no``, ``yes``, ``on`` and ``off`` as
booleans, so ``train.mixed_precision=no`` would arrive as ``False``; here, as in YAML 1.2, they are
strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from distill.errors import DistillError

_BOOL = "tag:yaml.org,2002:bool"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans (``true``/``false`` in any case only)."""


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load(text: str, where: str = "recipe") -> Any:
    """The YAML document in ``text``; a key repeated within one mapping is a one-line
    :class:`DistillError` naming the key and both lines, and invalid YAML is one too."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(node, where, "")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise DistillError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def _refuse_duplicates(node: yaml.Node, where: str, prefix: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in seen:
                    raise DistillError(
                        f"{where}: key '{prefix}{key}' is given twice (lines {seen[key]} and {line}); "
                        "keep one of them"
                    )
                seen[key] = line
            _refuse_duplicates(value_node, where, f"{prefix}{key}." if key is not None else prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, where, prefix)
