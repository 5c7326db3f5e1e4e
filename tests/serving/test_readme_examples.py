"""The README's chat and serving examples run as written — the ``curl`` command, the ``openai``
client (structured outputs too) and ``mmjax.chat`` — against the test server and checkpoint, and agree
with each other."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

from mmjax.demo import demo_photo

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000"


def serving_section() -> str:
    text = README.read_text()
    start = text.index("## Chat and the OpenAI-compatible server")
    return text[start:text.index("\n## ", start + 1)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", serving_section(), flags=re.S)


@pytest.fixture()
def photo_dir(tmp_path, monkeypatch):
    """A working directory holding the examples' ``photo.jpg`` (small enough for the test limits)."""
    demo_photo().resize((160, 160)).save(tmp_path / "photo.jpg", "JPEG", quality=85)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_examples_run_and_agree(server, llava_checkpoint, reference_llm, photo_dir):
    python_chat, python_client, python_structured = blocks("python")
    serve_command, curl_command = blocks("bash")
    assert "mmjax serve" in serve_command and README_URL in curl_command and README_URL in python_client

    assert shutil.which("curl"), "the README's example uses curl; it is not on this machine"
    done = subprocess.run(["bash", "-c", curl_command.replace(README_URL, server.url)], capture_output=True,
                          text=True, timeout=120, check=True)
    curl_answer = json.loads(done.stdout)["choices"][0]["message"]["content"]

    client_namespace: dict = {}
    exec(compile(python_client.replace(README_URL, server.url), "README openai block", "exec"), client_namespace)
    assert client_namespace["model"] == "tiny-llava"
    exec(compile(python_structured, "README structured outputs block", "exec"), client_namespace)
    assert isinstance(json.loads(client_namespace["reply"].choices[0].message.content)["n"], int)
    assert client_namespace["yes_no"].choices[0].text in ("yes", "no")

    chat_namespace: dict = {}
    offline = python_chat.replace("path/to/llava-1.5-7b-hf", llava_checkpoint)
    exec(compile(offline, "README mmjax.chat block", "exec"), chat_namespace)
    reply = chat_namespace["reply"]

    assert len(reply.token_ids) == 32 and reply.text
    assert curl_answer == reply.text
    assert client_namespace["answer"] == reply.text
