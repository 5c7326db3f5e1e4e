"""A switch that holds while a program is traced: the engine turns it on around a model's trace (its CPU
step and encoder programs), and the layers read it to pick a native kernel over XLA's ops."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


class TraceFlag:
    """Off by default; on within ``with flag.on():`` (per thread and task, as a ``ContextVar``)."""

    def __init__(self, name: str):
        self._var: contextvars.ContextVar[bool] = contextvars.ContextVar(name, default=False)

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        token = self._var.set(True)
        try:
            yield
        finally:
            self._var.reset(token)

    def is_on(self) -> bool:
        return self._var.get()
