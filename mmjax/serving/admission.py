"""Admission control: how many requests the server holds at once, refused with 503 beyond it.

A request is admitted before its body is read or any image is fetched or prompt mapped, and
released when its answer ends (a stream's last event, an error, a client that went away). Each
prompt of a completions request counts as one. Beyond ``capacity`` a request gets HTTP 503 with
``Retry-After``: cheaper for everyone than a queue that grows without bound.
"""

from __future__ import annotations

import threading

from mmjax.serving.errors import HTTPError

#: Seconds a refused client is asked to wait (``Retry-After``).
RETRY_AFTER_S = 1


class Admission:
    """Counts admitted requests up to ``capacity``; ``admitted`` is read by /metrics."""

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"the admission capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.admitted = 0
        self._lock = threading.Lock()

    def admit(self, count: int = 1) -> Ticket:
        """A ticket for ``count`` more requests, or ``HTTPError`` 503 when they would pass the capacity."""
        with self._lock:
            if self.admitted + count > self.capacity:
                raise HTTPError(503, f"the server is at its limit of {self.capacity} requests in flight; retry "
                                f"after {RETRY_AFTER_S} s", kind="service_unavailable", code="server_busy",
                                retry_after=RETRY_AFTER_S)
            self.admitted += count
        return Ticket(self, count)

    def _release(self, count: int) -> None:
        with self._lock:
            self.admitted -= count


class Ticket:
    """Admitted requests; ``release()`` (idempotent) gives their places back, ``grow`` takes more."""

    def __init__(self, admission: Admission, count: int):
        self._admission, self.count = admission, count

    def grow(self, count: int) -> None:
        if count > 0:
            self._admission.admit(count)
            self.count += count

    def release(self) -> None:
        if self.count:
            self._admission._release(self.count)
            self.count = 0
