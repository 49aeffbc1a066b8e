"""CachedReader / ResponseCache: a repeated question costs no reader call."""

import sqlite3
import threading

import pytest

from rrpo.cache import CachedReader, ResponseCache, cache_key
from rrpo.readers import CachedReader as ReexportedCachedReader
from rrpo.readers import LocalReader


class CountingReader:
    """Deterministic fake reader that counts the prompts it is sent."""

    def __init__(self, identity="counting"):
        self.identity = identity
        self.generate_calls = 0
        self.loglik_calls = 0
        self.sent: list[str] = []

    def generate(self, prompts):
        self.generate_calls += 1
        self.sent.extend(prompts)
        return [f"answer to {p}" for p in prompts]

    def loglik(self, prompts, targets):
        self.loglik_calls += 1
        self.sent.extend(prompts)
        return [-float(len(p) + len(t)) for p, t in zip(prompts, targets)]


def test_second_call_with_same_prompts_makes_no_reader_call():
    inner = CountingReader()
    reader = CachedReader(inner)
    first = reader.generate(["a", "b", "a"])
    assert first == ["answer to a", "answer to b", "answer to a"]
    # the duplicate inside one request is sent once
    assert inner.sent == ["a", "b"] and reader.calls == 2
    assert (reader.hits, reader.misses) == (0, 3)
    second = reader.generate(["b", "a"])
    assert second == ["answer to b", "answer to a"]
    assert inner.generate_calls == 1 and reader.calls == 2
    assert reader.stats() == {"hits": 2, "misses": 3, "calls": 2, "hit_rate": pytest.approx(0.4), "entries": 2}


def test_only_the_missing_items_are_sent():
    inner = CountingReader()
    reader = CachedReader(inner)
    reader.loglik(["p1", "p2"], ["t", "t"])
    inner.sent.clear()
    values = reader.loglik(["p1", "p3", "p2"], ["t", "t", "other"])
    assert inner.sent == ["p3", "p2"]  # (p2, "other") is a different target
    assert values == [-3.0, -3.0, -7.0]


def test_keys_separate_reader_kind_prompt_and_target():
    keys = {
        cache_key("r1", "generate", "p"),
        cache_key("r2", "generate", "p"),
        cache_key("r1", "loglik", "p", "t"),
        cache_key("r1", "loglik", "p", "u"),
        cache_key("r1", "loglik", "p t", ""),
    }
    assert len(keys) == 5
    # generate and loglik of the same prompt never share an entry
    reader = CachedReader(CountingReader())
    reader.generate(["p"])
    assert reader.loglik(["p"], ["x"]) == [-2.0]


def test_sqlite_persistence_survives_a_new_process(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    first = CachedReader(CountingReader("model-x"), path=path)
    first.generate(["hello"])
    first.loglik(["hello"], ["world"])
    first.cache.close()
    # a fresh wrapper (new in-memory dict) reads the file
    inner = CountingReader("model-x")
    second = CachedReader(inner, path=path)
    assert second.generate(["hello"]) == ["answer to hello"]
    assert second.loglik(["hello"], ["world"]) == [-10.0]
    assert inner.sent == [] and second.hits == 2 and second.calls == 0
    assert len(second.cache) == 2
    # another reader identity does not see those entries
    other = CachedReader(CountingReader("model-y"), path=path)
    other.generate(["hello"])
    assert other.calls == 1
    # the file is a plain SQLite table of digests: no prompt text stored
    rows = sqlite3.connect(path).execute("SELECT key, reader, kind, value FROM responses").fetchall()
    assert {r[1] for r in rows} == {"model-x", "model-y"}
    assert all("hello" not in r[0] for r in rows)


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="cannot use .*cache.sqlite as a response cache"):
        ResponseCache(bad)


def test_thread_safe_counts():
    inner = CountingReader()
    reader = CachedReader(inner)
    prompts = [f"p{i}" for i in range(50)]
    threads = [threading.Thread(target=reader.generate, args=(prompts,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reader.hits + reader.misses == 200
    assert len(reader.cache) == 50


def test_reader_length_mismatch_is_caught():
    class Broken(CountingReader):
        def generate(self, prompts):
            return ["only one"]

    with pytest.raises(RuntimeError, match="returned 1 generate results for 2 inputs"):
        CachedReader(Broken()).generate(["a", "b"])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        CachedReader(CountingReader()).loglik(["a", "b"], ["t"])


def test_cache_with_the_real_local_reader(tiny_causal_lm_dir, tmp_path):
    real = LocalReader(str(tiny_causal_lm_dir), device="cpu", max_new_tokens=4, progress=False)
    sent = []
    original = real.generate

    def counting_generate(prompts):
        sent.extend(prompts)
        return original(prompts)

    real.generate = counting_generate
    reader = ReexportedCachedReader(real, path=tmp_path / "c.sqlite")
    assert reader.identity == real.identity
    prompts = ["What is 2+2?", "Name a colour."]
    first = reader.generate(prompts)
    lls = reader.loglik(prompts, ["4", "red"])
    assert reader.calls == 4 and len(sent) == 2
    assert reader.generate(prompts) == first
    assert reader.loglik(prompts, ["4", "red"]) == pytest.approx(lls)
    assert len(sent) == 2 and reader.calls == 4 and reader.hits == 4
