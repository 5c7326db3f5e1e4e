"""One tiny LLaVA-1.5 server for the serving tests, on 127.0.0.1, started once.

The reference answers come from a second handle on the same checkpoint (its own engine):
the server's engine belongs to the server's loop thread while it runs.
"""

from __future__ import annotations

import pytest

from mmjax.serving.app import ServerConfig
from mmjax.serving.media import MediaLimits
from mmjax.serving.server import ServerThread
from tests.engine.engine_fixtures import LLAVA, checkpoint, load

#: Small limits, so that the tests can cross them with small files.
MEDIA = MediaLimits(fetch_timeout_s=5.0, max_image_bytes=64 * 1024, max_image_pixels=512 * 512)
MAX_REQUEST_BYTES = 1024 * 1024


@pytest.fixture(scope="session")
def served_llm():
    return load(LLAVA)


@pytest.fixture(scope="session")
def reference_llm():
    """Another handle on the same checkpoint, for offline reference answers."""
    return load(LLAVA)


@pytest.fixture(scope="session")
def server(served_llm):
    engine = served_llm.engine()
    config = ServerConfig(model_name="tiny-llava", media=MEDIA, max_request_bytes=MAX_REQUEST_BYTES)
    with ServerThread(served_llm, engine, config) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def llava_checkpoint():
    return checkpoint(LLAVA)
