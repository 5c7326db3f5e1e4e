"""Resolving ``mm_processor_kwargs``: model-level defaults, per-request overrides, filtering.

The model config's ``mm_processor_kwargs`` and a request's are merged, the
request winning key by key. Each hook receives only the keys its signature
accepts (silently: a key meant for the input processor is not an error for the
mapper). A key that *no* hook of the model accepts is dropped with a warning.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: ``None`` stands for "accepts any keyword" (the function takes ``**kwargs``).
Keywords = frozenset[str] | None


@functools.lru_cache(maxsize=256)
def accepted_keywords(fn: Callable[..., Any], skip: int) -> Keywords:
    """Names ``fn`` accepts by keyword after its first ``skip`` positional parameters."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(
        p.name for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def union_keywords(sets: Iterable[Keywords]) -> Keywords:
    """The union of several keyword sets (``None`` if any accepts everything)."""
    result: set[str] = set()
    for keywords in sets:
        if keywords is None:
            return None
        result |= keywords
    return frozenset(result)


def merge_kwargs(model_kwargs: Mapping[str, Any] | None, request_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model's kwargs overridden key by key by the request's."""
    return {**(model_kwargs or {}), **(request_kwargs or {})}


def select_kwargs(kwargs: Mapping[str, Any], fn: Callable[..., Any], *, skip: int) -> dict[str, Any]:
    """The part of ``kwargs`` that ``fn`` accepts (after ``skip`` positional parameters)."""
    if not kwargs:
        return {}
    accepted = accepted_keywords(fn, skip)
    return dict(kwargs) if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}


def warn_unaccepted(model_name: str, kwargs: Mapping[str, Any], accepted: Keywords) -> None:
    """Warn about the keys of ``kwargs`` that no hook of the model accepts."""
    if accepted is None:
        return
    dropped = sorted(set(kwargs) - accepted)
    if dropped:
        warnings.warn(
            f"mm_processor_kwargs {dropped} are not accepted by any multimodal hook of {model_name} "
            f"(accepted: {sorted(accepted)}) and were dropped",
            stacklevel=4,
        )
