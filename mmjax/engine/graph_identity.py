"""A model graph's identity across processes: the part of a stored program's key its closure gives.

``repr(graphdef)`` holds the model's classes and every static attribute (configs, dtypes, sizes), but a
function kept as an attribute (flax's ``promote_dtype``, an activation) prints with its address, which
differs in each process. Here those functions are named by module and qualified name instead. A graph
whose code the store's key does not hold has no identity (None: its programs are only jitted): a class,
or a function kept as an attribute, from outside mmjax and the libraries whose versions are in the key
(a plugin's model, a notebook's layer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flax import nnx

#: Top-level packages whose code a stored program's key holds (mmjax's source, the others' versions).
KEYED_PACKAGES = frozenset({"mmjax", "flax", "jax", "jaxlib", "numpy", "builtins"})


def graph_identity(graphdef: nnx.GraphDef) -> str | None:
    """``repr(graphdef)`` with every function attribute named rather than addressed; None where the graph
    runs code from outside ``KEYED_PACKAGES`` or holds an object printed by its address."""
    if any(_package(getattr(node, "type", object)) not in KEYED_PACKAGES for node in graphdef.nodes):
        return None
    text = repr(graphdef)
    for function in _functions(graphdef.attributes):
        if _package(function) not in KEYED_PACKAGES:
            return None
        name = getattr(function, "__name__", type(function).__name__)
        named = f"<function {function.__module__}.{getattr(function, '__qualname__', name)}>"
        for printed in (function, getattr(function, "fun", None), getattr(function, "__wrapped__", None)):
            text = text.replace(f"<function {name} at {id(printed):#x}>", named)  # jax.custom_jvp prints its fun
    return None if " at 0x" in text else text


def _package(thing: Any) -> str:
    return (getattr(thing, "__module__", None) or "").split(".")[0]


def _functions(value: Any) -> Iterator[Any]:
    """Every function inside ``value``: graph attributes, ``Static`` wrappers, dicts, lists and tuples."""
    if callable(value) and not isinstance(value, type) and hasattr(value, "__name__"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _functions(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _functions(item)
    elif hasattr(value, "value"):  # nnx's Static(value=...)
        yield from _functions(value.value)
