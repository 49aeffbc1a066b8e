"""A real OpenAI-compatible server for the OpenAI reader's tests.

``llama_server`` (session-scoped) starts llama-cpp-python's server on a free loopback
port serving the packaged SmolLM2 GGUF, waits until it answers, and stops it after the
session. A missing ``llama-cpp-python[server]`` or a server that does not come up is a
test FAILURE (CI installs it), never a skip.

Use from a test module with ``from tests.llama_server import llama_server  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 120.0
MODEL_ALIAS = "smollm2"


@dataclass
class LlamaServer:
    base_url: str  # e.g. http://127.0.0.1:PORT/v1
    model: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server process this fixture started (and only it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(server: LlamaServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as response:
                if json.load(response).get("data"):
                    return
        except OSError:
            time.sleep(0.5)
    log = server.log_path.read_text(errors="replace")[-3000:] if server.log_path.exists() else ""
    server.stop()
    pytest.fail(f"llama-cpp-python server did not come up on port {server.port}:\n{log}")


def start_llama_server(log_dir: Path, n_ctx: int = 2048) -> LlamaServer:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the OpenAI reader tests need llama-cpp-python[server]: {exc}")
    from rrpo.models import packaged_smollm2_gguf

    gguf = packaged_smollm2_gguf()
    port = free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--logits_all", "true",  # echo logprobs need every position
        "--n_threads", "2", "--verbose", "false",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", MODEL_ALIAS, port, process, log_path)
    _wait_until_up(server)
    return server


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    server = start_llama_server(tmp_path_factory.mktemp("llama_server"))
    yield server
    server.stop()
