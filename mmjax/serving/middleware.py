"""The ASGI layer around every route: a request id, the optional API key, a last-resort 500, counts.

Each request gets an id (``X-Request-Id`` on its response, ``request.state.request_id`` for the
routes). With an API key set, ``/v1/`` routes need ``Authorization: Bearer <key>``; ``/health``
and ``/metrics`` stay open, as in vLLM. An exception no route handled is logged with its
traceback under the request id, and the client gets a 500 that names only that id.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.datastructures import Headers, MutableHeaders

from mmjax.serving.errors import error_response, internal_error_message, new_request_id

log = logging.getLogger("mmjax.serving")

#: Routes counted by name in /metrics; any other path is counted as "other".
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openapi.json")


class RequestContext:
    """Pure ASGI middleware (streams pass through untouched)."""

    def __init__(self, app: Any, *, api_key: str | None, metrics: Any):
        self.app, self._api_key, self._metrics = app, api_key, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        sent = {"status": 0}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        path = scope.get("path", "")
        try:
            if self._api_key is not None and path.startswith("/v1/") and not self._authorized(scope):
                response = error_response(401, "this server needs an API key: send Authorization: Bearer <key>",
                                          "authentication_error", request_id, code="invalid_api_key")
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 (the last resort: the client hears only the id, the log everything)
            log.exception("request %s %s failed", request_id, path)
            if not sent["status"]:
                response = error_response(500, internal_error_message(request_id), "server_error", request_id)
                await response(scope, receive, send_with_id)
        finally:
            route = path if path in ROUTES else "other"
            self._metrics.requests.labels(route, f"{sent['status'] // 100}xx" if sent["status"] else "none").inc()

    def _authorized(self, scope: dict) -> bool:
        given = Headers(scope=scope).get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key.encode())
