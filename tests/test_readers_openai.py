"""OpenAIReader against a real OpenAI-compatible server (llama-cpp-python serving the
SmolLM2 GGUF on loopback) and against a scripted loopback handler for the faults a real
endpoint shows: 429/5xx before success, a hanging endpoint, a server that went away,
a server that echoes the API key back, malformed judge output."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rrpo import Candidate
from rrpo.cache import CachedReader
from rrpo.prompts import build_prompt
from rrpo.readers import OpenAIReader, Reader, ReaderError, get_reader
from rrpo.rewards import gold_loglik, llm_judge
try:  # the session fixture; tests/ is on sys.path in pytest's default (prepend) import mode
    from tests.llama_server import llama_server  # noqa: F401
except ImportError:
    from llama_server import llama_server  # noqa: F401

SECRET = "sk-test-DO-NOT-LEAK-0123456789"
FRANCE = build_prompt(
    "What is the capital of France?",
    [Candidate(id="1", title="Paris", text="Paris is the capital and largest city of France.")],
)


def chat_response(content: str) -> dict:
    return {
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
    }


class ScriptedEndpoint:
    """A loopback HTTP server that plays a script, then forwards to ``upstream``.

    Script items: an int (reply with that HTTP status, echoing the Authorization header
    back in the body, as a careless server might), ``"hang"`` (never answer), a dict (reply
    200 with that JSON), or ``("delay", seconds, item)``.
    """

    def __init__(self, upstream: str | None = None, script=()):
        self.upstream = upstream
        self.script = list(script)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                owner._handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self):
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def _next(self):
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.script.pop(0) if self.script else "forward"

    def _handle(self, handler):
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        action = self._next()
        try:
            self._play(handler, action, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _play(self, handler, action, body):
        if isinstance(action, tuple):
            time.sleep(action[1])
            action = action[2]
        if action == "hang":
            self._stopping.wait(60)
            return
        if isinstance(action, int):
            echo = handler.headers.get("Authorization", "")
            return self._send(handler, action, {"error": {"message": f"scripted {action}; you sent {echo}"}})
        if isinstance(action, dict):
            return self._send(handler, 200, action)
        request = urllib.request.Request(
            self.upstream + handler.path.removeprefix("/v1"), data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        self._send(handler, status, data)

    @staticmethod
    def _send(handler, status, payload):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def endpoint():
    endpoints = []

    def make(upstream=None, script=()):
        ep = ScriptedEndpoint(upstream, script)
        endpoints.append(ep)
        return ep

    yield make
    for ep in endpoints:
        ep.stop()


def reader_for(url, **kw):
    # llama-cpp-python's server answers one request at a time: queueing 8 on a busy
    # 2-core machine would only make the later ones time out.
    kw.setdefault("max_concurrency", 1)
    kw.setdefault("timeout", 120.0)
    kw.setdefault("api_key", SECRET)
    kw.setdefault("backoff", 0.05)
    return OpenAIReader("smollm2", base_url=url, max_tokens=12, **kw)


# --------------------------------------------------------------------------- real server


def test_generate_and_loglik_on_the_real_server(llama_server):
    reader = reader_for(llama_server.base_url)
    assert isinstance(reader, Reader)
    answers = reader.generate([FRANCE, "Who wrote Hamlet? Answer in a few words."])
    assert len(answers) == 2 and all(isinstance(a, str) and a and "\n" not in a for a in answers)
    values = reader.loglik([FRANCE, FRANCE], ["Paris", "Berlin"])
    assert all(math.isfinite(v) and v < 0 for v in values)
    # Aligned log-probs: the answer the passage states is far likelier than another city.
    assert values[0] > values[1] + 1.0
    assert reader.attempts == 4  # no retries needed


def test_async_api_and_sync_call_inside_a_running_loop(llama_server):
    reader = reader_for(llama_server.base_url)

    async def main():
        direct = await reader.aloglik([FRANCE], ["Paris"])
        nested = reader.loglik([FRANCE], ["Paris"])  # sync call from inside a loop
        return direct, nested

    direct, nested = asyncio.run(main())
    assert direct == pytest.approx(nested, abs=1e-6)


def test_gold_loglik_reward_and_judge_through_the_real_server(llama_server):
    reader = reader_for(llama_server.base_url)
    ctx = [[Candidate(id="1", title="Paris", text="Paris is the capital and largest city of France.")]]
    kwargs = dict(queries=["What is the capital of France?"], contexts=ctx, answers=[["Paris", "paris"]],
                  reader=reader, prompts=[FRANCE])
    assert gold_loglik(**kwargs)[0] == pytest.approx(max(reader.loglik([FRANCE] * 2, ["Paris", "paris"])))
    score = llm_judge(reader)(**kwargs)[0]
    assert score is None or 0.0 <= score <= 1.0


def test_cached_openai_reader_counts_calls_and_keeps_the_key_out_of_the_file(llama_server, endpoint, tmp_path):
    proxy = endpoint(llama_server.base_url)
    path = tmp_path / "cache.sqlite"
    reader = CachedReader(reader_for(proxy.base_url), path=path)
    first = reader.generate([FRANCE])
    reader.loglik([FRANCE], ["Paris"])
    assert proxy.requests == 2
    assert reader.generate([FRANCE]) == first and reader.loglik([FRANCE], ["Paris"])
    assert proxy.requests == 2 and reader.calls == 2 and reader.hits == 2
    reader.cache.close()
    for file in tmp_path.iterdir():
        assert SECRET.encode() not in file.read_bytes()
    assert SECRET not in reader.identity and SECRET not in repr(reader.reader)


# --------------------------------------------------------------------------- faults


def test_429_then_500_is_retried_then_succeeds(llama_server, endpoint):
    proxy = endpoint(llama_server.base_url, script=[429, 500])
    reader = reader_for(proxy.base_url, max_retries=4)
    value = reader.loglik([FRANCE], ["Paris"])[0]
    assert proxy.requests == 3 and reader.attempts == 3
    direct = reader_for(llama_server.base_url).loglik([FRANCE], ["Paris"])[0]
    assert value == pytest.approx(direct, abs=1e-6)


def test_retries_exhausted_names_the_endpoint_not_the_key(endpoint):
    proxy = endpoint(script=[503, 503, 503])
    reader = reader_for(proxy.base_url, max_retries=2)
    with pytest.raises(ReaderError) as info:
        reader.generate(["hi"])
    text = str(info.value)
    assert proxy.base_url in text and "HTTP 503" in text and "3 attempt" in text
    assert SECRET not in text and SECRET not in repr(info.value)
    # the original exception (whose text echoes the key) is not chained into tracebacks
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert proxy.requests == 3


def test_client_errors_are_not_retried(endpoint):
    proxy = endpoint(script=[400])
    with pytest.raises(ReaderError, match="HTTP 400"):
        reader_for(proxy.base_url).generate(["hi"])
    assert proxy.requests == 1


def test_hanging_endpoint_times_out(endpoint):
    proxy = endpoint(script=["hang", "hang"])
    reader = reader_for(proxy.base_url, timeout=1.0, max_retries=1)
    start = time.monotonic()
    with pytest.raises(ReaderError, match="APITimeoutError"):
        reader.generate(["hi"])
    assert time.monotonic() - start < 10
    assert proxy.requests == 2


def test_stopped_server_fails_fast_and_clearly(llama_server, endpoint):
    proxy = endpoint(llama_server.base_url)
    reader = reader_for(proxy.base_url, max_retries=2)
    assert reader.generate([FRANCE])[0]
    proxy.stop()
    start = time.monotonic()
    with pytest.raises(ReaderError, match=r"failed after 3 attempt\(s\): APIConnectionError") as info:
        reader.generate([FRANCE])
    assert time.monotonic() - start < 10
    assert proxy.base_url in str(info.value)


def test_concurrency_is_bounded(endpoint):
    proxy = endpoint(script=[("delay", 0.2, chat_response(f"a{i}")) for i in range(12)])
    reader = reader_for(proxy.base_url, max_concurrency=3, timeout=30.0)
    answers = reader.generate([f"q{i}" for i in range(12)])
    assert sorted(answers) == sorted(f"a{i}" for i in range(12))
    assert 1 < proxy.max_in_flight <= 3


def test_server_without_echo_logprobs_is_a_clear_error(endpoint):
    no_logprobs = {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                   "choices": [{"index": 0, "text": "hi", "finish_reason": "length", "logprobs": None}]}
    proxy = endpoint(script=[no_logprobs])
    with pytest.raises(ReaderError, match="no echoed prompt log-probabilities"):
        reader_for(proxy.base_url).loglik(["q"], ["a"])


def test_malformed_judge_output_gives_none(endpoint):
    proxy = endpoint(script=[chat_response("I am not able to grade this."), chat_response("Score: 4/5")])
    judge = reader_for(proxy.base_url)
    scores = llm_judge(judge)(
        queries=["q1", "q2"], contexts=[[], []], answers=[["a"], ["b"]], reader=None,
        prompts=["p1", "p2"], generations=["x", "y"],
    )
    assert scores == [None, pytest.approx(0.8)]


def test_get_reader_openai_spec(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    reader = get_reader("openai:my-model@http://127.0.0.1:9/v1", max_retries=0)
    assert isinstance(reader, OpenAIReader)
    assert (reader.model, reader.base_url, reader.max_retries) == ("my-model", "http://127.0.0.1:9/v1", 0)
    assert SECRET not in reader.identity and SECRET not in repr(reader)
    with pytest.raises(ReaderError) as info:
        reader.generate(["x"])
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match="openai:MODEL"):
        get_reader("openai:")
    with pytest.raises(ValueError, match="loglik_format"):
        OpenAIReader("m", loglik_format="nonsense")
