"""Running the HTTP API: ``serve`` (what ``mmjax serve`` calls, in the foreground) and ``ServerThread``
(the same server in a background thread: for notebooks, tests and benchmarks).

uvicorn serves the FastAPI app; on Ctrl-C or SIGTERM it stops accepting connections and gives
in-flight requests ``ServerConfig.shutdown_drain_s`` seconds to finish, then aborts the rest.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from mmjax.serving.app import ServerConfig, build_app


def _uvicorn_config(app: Any, host: str, port: int, config: ServerConfig, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=max(1, int(config.shutdown_drain_s)))


def serve(llm: Any, engine: Any, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve ``engine`` (an ``LLMEngine`` of ``llm``) on ``host:port`` until interrupted."""
    import uvicorn

    server = uvicorn.Server(_uvicorn_config(build_app(llm, engine, config), host, port, config, log_level))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down gracefully for: we are done
        pass


class ServerThread:
    """The server on a background thread, bound to ``host`` and a free port (``port=0``).

    ``with ServerThread(llm, engine, config) as server: OpenAI(base_url=server.url + "/v1", ...)``;
    leaving the block shuts it down (in-flight requests are aborted).

    Attributes:
      url: ``http://host:port``.
      app: the FastAPI app (``app.state.serving.engine`` is the engine it drives).
    """

    def __init__(self, llm: Any, engine: Any, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning"):
        import uvicorn

        self.app = build_app(llm, engine, config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        uvicorn_config = _uvicorn_config(self.app, host, port, config, log_level)
        uvicorn_config.timeout_graceful_shutdown = 1
        self._server = uvicorn.Server(uvicorn_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="mmjax-http", daemon=True)

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        self._thread.start()
        deadline = timeout_s
        while not self._server.started and self._thread.is_alive() and deadline > 0:
            threading.Event().wait(0.02)
            deadline -= 0.02
        if not self._server.started:
            raise RuntimeError(f"the server did not start within {timeout_s} s")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def default_model_name(model_dir: str) -> str:
    """The name a server gives its model when none is given: the checkpoint directory's name."""
    return os.path.basename(os.path.normpath(model_dir))
