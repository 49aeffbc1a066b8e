"""Reliability of the readers and the judge (issue #11, items 1, 5, 8 and 9).

A loopback stub plays the malformed replies a real endpoint can send (HTTP 200 with a
body that is not what the OpenAI API promises), the "prompt too long" 400 and the
credentials written into a base URL; the real llama-cpp-python server the suite starts
runs ``rrpo train`` / ``rrpo eval`` with ``--reader openai:MODEL@URL``.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from rrpo import Candidate, Example
from rrpo.cache import CachedReader
from rrpo.cli import main
from rrpo.data import save_examples
from rrpo.readers import LocalReader, OpenAIReader, ReaderError, get_reader
from rrpo.rewards import llm_judge, parse_judge_score

try:  # the session fixture; tests/ is on sys.path in pytest's default (prepend) import mode
    from tests.llama_server import llama_server  # noqa: F401
except ImportError:
    from llama_server import llama_server  # noqa: F401

URL_SECRET = "sk-in-the-url-0123456789"


class Stub:
    """A loopback OpenAI-compatible endpoint whose replies the test writes:
    ``reply(path, request) -> (status, body)``. A bytes body goes out as it is, under a
    JSON content type (as a broken proxy would send it); anything else as JSON."""

    def __init__(self, reply):
        self.reply = reply
        self.seen: list[dict] = []  # path, query, headers and JSON of each request
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                url = urlsplit(self.path)
                owner.seen.append({"path": url.path, "query": parse_qs(url.query), "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body})
                status, payload = owner.reply(url.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    made = []

    def make(reply):
        made.append(Stub(reply))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def chat(content) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}


def echoed(text: str, value: float = -1.0) -> dict:
    """A completions reply that echoes ``text`` one character a token, each at ``value``."""
    tokens = list(text)
    return {"id": "x", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": "", "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": [None] + [value] * (len(tokens) - 1)}}],
            "usage": {"prompt_tokens": len(tokens), "completion_tokens": 0, "total_tokens": len(tokens)}}


def reader_for(url: str, **kw) -> OpenAIReader:
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    return OpenAIReader("m", base_url=url, api_key="sk-test", **kw)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------- 1. the reader factory
def test_get_reader_passes_device_only_to_readers_that_take_it():
    reader = get_reader("openai:m@http://127.0.0.1:9/v1", device="cpu", dtype="fp32", max_retries=0)
    assert isinstance(reader, OpenAIReader) and reader.max_retries == 0
    with pytest.raises(TypeError, match="devcie"):  # a misspelt keyword still fails loudly
        get_reader("openai:m@http://127.0.0.1:9/v1", devcie="cpu")


def _small_data(path):
    examples = []
    for q in range(2):
        cands = [Candidate(f"q{q}p{j}", f"Harbour note {j}: the ferry {q} leaves at {j + 6} o'clock.") for j in range(3)]
        examples.append(Example(id=f"q{q}", query=f"When does ferry {q} leave?", candidates=cands,
                                answers=[f"{q + 6} o'clock"], gold=[j == q for j in range(3)]))  # fmt: skip
    save_examples(examples, path)
    return path


def test_cli_train_and_eval_with_an_openai_reader(llama_server, tiny_cross_encoder_dir, tmp_path, capsys):  # noqa: F811
    data = _small_data(tmp_path / "data.jsonl")
    reader = f"openai:{llama_server.model}@{llama_server.base_url}"
    out = tmp_path / "rrpo"
    assert main(["train", "--data", str(data), "--init", str(tiny_cross_encoder_dir), "--reader", reader,
                 "--max-steps", "1", "--group-size", "2", "--queries-per-step", "2", "--max-k", "2",
                 "--reward-mode", "terminal", "--checkpoint-every", "0", "--device", "cpu",
                 "--progress", "false", "--out", str(out)]) == 0  # fmt: skip
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["reader_calls"] > 0 and math.isfinite(row["reward_mean"])
    assert main(["eval", "--data", str(data), "--reranker", "none:top2", "--reader", reader, "--no-oracle",
                 "--device", "cpu", "--bootstrap", "10", "--no-progress", "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert "Traceback" not in capsys.readouterr().err


# ----------------------------------------------------------------- 5. malformed replies
MALFORMED_CHAT = [
    (b"<html>502 Bad Gateway</html>", "not valid JSON"),
    ({"choices": []}, "choices"),
    ({"choices": None}, "choices"),
    ({"choices": [{"index": 0, "message": None}]}, "message"),
    (chat(5), "not text"),
]


@pytest.mark.parametrize("body, says", MALFORMED_CHAT, ids=["html", "no-choices", "null-choices", "null-message", "int-content"])
def test_a_malformed_chat_reply_is_a_reader_error_saying_what_was_wrong(stub, body, says):
    server = stub(lambda path, req: (200, body))
    with pytest.raises(ReaderError, match=says) as info:
        reader_for(server.base_url).generate(["q"])
    assert server.base_url in str(info.value) and "malformed" in str(info.value)


def _logprobs(tokens, values, **extra) -> dict:
    return {"choices": [{"index": 0, "text": "", "logprobs": {"tokens": tokens, "token_logprobs": values}}], **extra}


MALFORMED_COMPLETION = [
    (b"not json at all", "not valid JSON"),
    ({"choices": []}, "choices"),
    (_logprobs(["a", "b"], [None, "x"]), "not a finite number"),
    (_logprobs(["a", "b"], [None, float("nan")]), "not a finite number"),
    (_logprobs(["a", None], [None, -1.0]), "not text"),
    (_logprobs(["a", "b"], [None, -1.0], usage={"completion_tokens": "1"}), "completion_tokens"),
]


@pytest.mark.parametrize("body, says", MALFORMED_COMPLETION, ids=["text", "no-choices", "str-logprob", "nan", "null-token", "str-usage"])
def test_a_malformed_completion_reply_is_a_reader_error_saying_what_was_wrong(stub, body, says):
    server = stub(lambda path, req: (200, body))
    with pytest.raises(ReaderError, match=says):
        reader_for(server.base_url).loglik(["q"], ["b"])


def test_judge_scores_out_of_range_or_overflowing_are_none():
    assert parse_judge_score("score: -1") is None
    assert parse_judge_score("1e400") is None
    assert parse_judge_score('{"score": 1e400}') is None
    assert parse_judge_score("Score: 4/5") == pytest.approx(0.8)  # what parsed still parses
    assert parse_judge_score("Rating = 4") == pytest.approx(0.75)


def test_a_judge_that_is_down_gives_none_and_one_warning(caplog):
    judge = reader_for(f"http://127.0.0.1:{closed_port()}/v1", timeout=2.0)
    reward = llm_judge(judge)
    kwargs = dict(queries=["q1", "q2"], contexts=[[], []], answers=[["a"], ["b"]], prompts=["p1", "p2"],
                  generations=["x", "y"])  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="rrpo.rewards"):
        assert reward(**kwargs) == [None, None]
        assert reward(**kwargs) == [None, None]
    warnings = [r for r in caplog.records if r.name == "rrpo.rewards"]
    assert len(warnings) == 1 and "judge" in warnings[0].getMessage()


# ----------------------------------------------------------------- 8. prompt sizes
CONTEXT = 512  # tokens the stub's "model" holds; the stub counts 4 characters a token


def _too_long(text: str, kind: str) -> dict:
    asked = len(text) // 4
    detail = (f"However, you requested {asked + 8} tokens ({asked} in the messages, 8 in the completion)"
              if kind == "chat" else f"however you requested {asked + 1} tokens ({asked} in your prompt; 1 for the completion)")
    return {"error": {"message": f"This model's maximum context length is {CONTEXT} tokens. {detail}.",
                      "type": "invalid_request_error", "code": "context_length_exceeded"}}  # fmt: skip


def _sized_endpoint(path, req):
    """Answers like llama-cpp-python's server: a 400 for a prompt past the context window."""
    if path.endswith("/chat/completions"):
        text = req["messages"][0]["content"]
        return (400, _too_long(text, "chat")) if len(text) // 4 > CONTEXT - 8 else (200, chat(f"read {len(text)}"))
    text = req["prompt"]
    return (400, _too_long(text, "completion")) if len(text) // 4 > CONTEXT - 1 else (200, echoed(text))


LONG = "Answer from the passages.\n\n" + "The grey ferry waits at the harbour wall. " * 120 + "\n\nQuestion: When does it leave?\nAnswer:"


def test_one_overlong_prompt_is_cut_not_fatal_to_its_batch(stub, caplog):
    server = stub(_sized_endpoint)
    reader = reader_for(server.base_url)
    with caplog.at_level(logging.WARNING, logger="rrpo.readers"):
        answers = reader.generate(["When does it leave?", LONG])
        values = reader.loglik([LONG, "When does it leave?"], ["at six", "at six"])
    assert answers[0] == "read 19" and answers[1].startswith("read ")
    assert int(answers[1].split()[1]) // 4 <= CONTEXT - 8
    assert values == [pytest.approx(-1.0), pytest.approx(-1.0)]
    cut = [s["json"]["messages"][0]["content"] for s in server.seen if "messages" in s["json"]][-1]
    assert cut.startswith("Answer from the passages.") and cut.endswith("Question: When does it leave?\nAnswer:")
    assert len([r for r in caplog.records if "too long" in r.getMessage()]) == 1


def test_local_reader_refuses_a_prompt_budget_past_the_context_window(tiny_causal_lm_dir):
    with pytest.raises(ValueError, match=r"max_prompt_tokens .*context window .*2048"):
        LocalReader(str(tiny_causal_lm_dir), device="cpu", max_prompt_tokens=10**9)


# ----------------------------------------------------------------- 9. credentials in URLs
def test_a_key_in_the_url_is_sent_but_never_stored_logged_or_shown(stub, tmp_path, caplog):
    server = stub(lambda path, req: (200, chat("Paris")))
    caplog.set_level(logging.DEBUG)  # httpx logs every request URL at INFO
    reader = reader_for(f"{server.base_url}?api-key={URL_SECRET}&api-version=2024-06-01")
    cached = CachedReader(reader, path=tmp_path / "cache.sqlite")
    assert cached.generate(["capital of France?"]) == ["Paris"]
    assert server.seen[-1]["query"] == {"api-key": [URL_SECRET], "api-version": ["2024-06-01"]}  # still sent
    assert reader.base_url == f"{server.base_url}?api-key=***&api-version=***"
    cached.cache.close()
    shown = [reader.identity, repr(reader), caplog.text] + [f.read_bytes().decode("latin-1") for f in tmp_path.iterdir()]
    assert not [text for text in shown if URL_SECRET in text]

    userinfo = OpenAIReader("m", base_url=f"http://user:{URL_SECRET}@127.0.0.1:{server.port}/v1", max_retries=0)
    assert userinfo.generate(["hi"]) == ["Paris"]
    assert server.seen[-1]["headers"]["authorization"] == f"Bearer {URL_SECRET}"  # the URL's key is the API key
    assert URL_SECRET not in userinfo.identity + repr(userinfo) + caplog.text


def test_an_error_from_a_url_with_a_key_does_not_show_it(stub):
    server = stub(lambda path, req: (503, {"error": {"message": f"busy, you sent {path}"}}))
    with pytest.raises(ReaderError) as info:
        reader_for(f"{server.base_url}?key={URL_SECRET}").generate(["hi"])
    assert URL_SECRET not in str(info.value) and "HTTP 503" in str(info.value)
