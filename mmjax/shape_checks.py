"""Runtime checking of mmjax's shape annotations (the letters of ``mmjax.types``).

Runtime checking: ``shape_checked`` marks a public function whose annotations
are to be enforced. With ``MMJAX_SHAPE_CHECKS=1`` in the environment when
mmjax is imported (the test suite sets it), every call checks its arguments
and return value with jaxtyping and beartype, one set of dimension letters per
call, so ``q: "T N H"`` and ``k: "T K H"`` must agree on ``T`` and ``H``; the
array fields of a dataclass argument or return value (``KVPages``,
``AttentionMetadata``, ...) are checked against the same letters. A mismatch
raises ``jaxtyping.TypeCheckError``. Otherwise the decorator returns the
function unchanged and nothing is checked (beartype is a test dependency only).
Under ``jax.jit`` put ``shape_checked`` inside the jit (``@jax.jit`` above it):
the check then runs on the tracers' shapes once per compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, Union

import jaxtyping
import numpy as np

#: Whether ``shape_checked`` checks: ``MMJAX_SHAPE_CHECKS=1`` when mmjax was imported.
SHAPE_CHECKS = os.environ.get("MMJAX_SHAPE_CHECKS") == "1"

_F = TypeVar("_F", bound=Callable[..., Any])


def shape_checked(fn: _F) -> _F:
    """``fn`` itself, or with ``MMJAX_SHAPE_CHECKS=1`` ``fn`` checked by jaxtyping + beartype (see above).

    The checked function's ``__mmjax_shape_checked__`` is True, so a test can tell that checks are on.
    """
    if not SHAPE_CHECKS:
        return fn
    import beartype  # a test dependency: only needed when the checks are on

    checked = jaxtyping.jaxtyped(typechecker=beartype.beartype)(_with_field_checks(fn))
    checked.__mmjax_shape_checked__ = True
    return checked


def _with_field_checks(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, also checking the array fields of its dataclass arguments and return values.

    jaxtyping runs it inside the call's dimension memo, so a field's letters are
    those of the arguments (``pages.k: "K A G H"`` against ``k: "T K H"``). The
    annotations are resolved here, in ``fn``'s module, and given to jaxtyping as
    objects (it would resolve strings in this module, not ``fn``'s).
    """
    hints = typing.get_type_hints(fn, include_extras=True)  # fails loudly: an unresolved hint is unchecked
    signature = inspect.signature(fn)
    signature = signature.replace(
        parameters=[p.replace(annotation=hints.get(name, p.annotation)) for name, p in signature.parameters.items()],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    where = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        for name, value in arguments.items():
            _check_fields(value, name, where, arguments)
        out = fn(*args, **kwargs)
        for i, value in enumerate(out if isinstance(out, tuple) else (out,)):
            _check_fields(value, f"return value {i}" if isinstance(out, tuple) else "return value", where, arguments)
        return out

    checked.__signature__ = signature
    return checked


@functools.cache
def _array_fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """The dataclass fields of ``cls`` annotated with a jaxtyping array type (possibly ``| None``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if _is_array_hint(hints.get(f.name)))


def _is_array_hint(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray):
        return True
    return typing.get_origin(hint) in (Union, types.UnionType) and any(map(_is_array_hint, typing.get_args(hint)))


def _matches(value: Any, hint: Any) -> bool:
    # isinstance() on a Union would ask issubclass() of each member, which jaxtyping's types do not answer.
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_matches(value, member) for member in typing.get_args(hint))
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}" + (" (numpy)" if isinstance(value, np.ndarray) else "")
    return type(value).__name__


def _hint_str(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " | ".join(map(_hint_str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def _check_fields(value: Any, name: str, where: str, arguments: dict[str, Any]) -> None:
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    for field, hint in _array_fields(type(value)):
        item = getattr(value, field)
        if not _matches(item, hint):
            shapes = ", ".join(f"{k}: {_describe(v)}" for k, v in arguments.items() if hasattr(v, "shape"))
            raise jaxtyping.TypeCheckError(
                f"Type-check error whilst checking {where}: {name}.{field} is {_describe(item)}, expected "
                f"{_hint_str(hint)}, in the dimensions of the arguments ({shapes})")
