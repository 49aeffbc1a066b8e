"""llama_index_rrpo: the node postprocessor and the feedback collector, on real
llama-index-core objects (nodes, events, callback manager, VectorStoreIndex, query
engines) with a fake reranker for the logic and the real rrpo.Reranker beside it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from llama_index_rrpo import RECORD_ID_KEY, FeedbackCollector, RRPORerank
from rrpo import Selection
from rrpo.feedback import FeedbackStore, UnknownRecordError

PASSAGES = [
    ("Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("Macbeth", "Macbeth is a tragedy by William Shakespeare about a Scottish general."),
    ("Paris", "Paris is the capital and largest city of France."),
    ("Berlin", "Berlin is the capital of Germany and its largest city."),
    ("Python", "Python is a programming language created by Guido van Rossum."),
    ("Danube", "The Danube is the second-longest river in Europe."),
    ("Everest", "Mount Everest is Earth's highest mountain above sea level."),
    ("Mozart", "Wolfgang Amadeus Mozart was a prolific composer of the Classical period."),
]


class FakeReranker:
    """Scores by word overlap; keeps the candidates that share a word (dynamic k)."""

    name_or_path = "fake-overlap"
    version = "fake-overlap-v1"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def rerank(self, query, candidates, top_n=None, min_k=1, dynamic_k=True):
        self.calls += 1
        time.sleep(self.delay)
        words = _content_words(query)
        scores = [float(len(words & _content_words(c.text))) for c in candidates]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        limit = len(order) if top_n is None else min(top_n, len(order))
        k = sum(1 for s in scores if s > 0) if dynamic_k else limit
        return Selection(order=order, k=max(min(k, limit), min(min_k, limit)), scores=scores)


def _content_words(text: str) -> set[str]:
    cleaned = "".join(ch if ch.isalnum() else " " for ch in text.lower())
    return {w for w in cleaned.split() if len(w) > 3 and w != "title"}


def make_nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=text, metadata={"title": title}), score=0.5 - i * 0.01)
        for i, (title, text) in enumerate(PASSAGES)
    ]


def dump(nodes):
    return [n.model_dump() for n in nodes]


@pytest.fixture(scope="module")
def tiny_reranker(tiny_cross_encoder_dir):
    from rrpo import Reranker

    return Reranker.from_pretrained(str(tiny_cross_encoder_dir), device="cpu")


@pytest.fixture(scope="module")
def minilm_embedding():
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from rrpo.models import packaged_minilm_dir

    return HuggingFaceEmbedding(model_name=str(packaged_minilm_dir()), device="cpu")


class EventLog(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "EventLog"

    def handle(self, event, **kwargs):
        self.events.append(event)


@pytest.fixture()
def event_log():
    dispatcher = get_dispatcher()
    log = EventLog(events=[])
    dispatcher.add_event_handler(log)
    yield log
    dispatcher.event_handlers.remove(log)


# -- RRPORerank ---------------------------------------------------------------------------


def test_rerank_keeps_relevant_copies_and_leaves_input_untouched():
    nodes = make_nodes()
    before = dump(nodes)
    rerank = RRPORerank(reranker=FakeReranker(), top_n=5, keep_retrieval_score=True)
    out = rerank.postprocess_nodes(nodes, query_str="who wrote the tragedy Hamlet?")
    assert dump(nodes) == before  # caller's nodes unchanged
    assert [n.node.node_id for n in out] == ["n0", "n1"]  # dynamic k: 2 overlap
    assert all(o is not n and o.node is not n.node for o in out for n in nodes)
    first = out[0]
    assert isinstance(first.score, float) and first.score == first.node.metadata["relevance_score"]
    assert first.node.metadata["rrpo_rank"] == 1 and first.node.metadata["rrpo_k"] == 2
    assert first.node.metadata["retrieval_score"] == 0.5 and first.node.metadata["title"] == "Hamlet"
    # Our bookkeeping does not leak into the reader's prompt or the embedding text.
    assert "relevance_score" not in first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "rrpo_k" not in first.node.get_content(metadata_mode=MetadataMode.EMBED)
    assert "title: Hamlet" in first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert RRPORerank.class_name() == "RRPORerank" and rerank.model == "fake-overlap"


def test_reranker_sees_embed_text():
    seen = []

    class Spy(FakeReranker):
        def rerank(self, query, candidates, **kw):
            seen.extend(c.text for c in candidates)
            return super().rerank(query, candidates, **kw)

    RRPORerank(reranker=Spy()).postprocess_nodes(make_nodes()[:1], query_str="Hamlet")
    assert seen == ["title: Hamlet\n\nHamlet is a tragedy written by William Shakespeare around 1600."]


def test_fixed_k_top_n_and_min_k():
    nodes = make_nodes()
    fixed = RRPORerank(reranker=FakeReranker(), top_n=3, dynamic_k=False)
    assert len(fixed.postprocess_nodes(nodes, query_str="Hamlet")) == 3
    uncapped = RRPORerank(reranker=FakeReranker(), top_n=None, dynamic_k=False)
    assert len(uncapped.postprocess_nodes(nodes, query_str="Hamlet")) == len(nodes)
    at_least = RRPORerank(reranker=FakeReranker(), top_n=5, min_k=4)
    assert len(at_least.postprocess_nodes(nodes, query_str="nothing matches zzz")) == 4
    with pytest.raises(ValueError, match="top_n"):
        RRPORerank(reranker=FakeReranker(), top_n=2, min_k=3)
    with pytest.raises(ValueError, match="query"):
        RRPORerank(reranker=FakeReranker()).postprocess_nodes(nodes)


def test_empty_input_gives_empty_output_and_events(event_log):
    rerank = RRPORerank(reranker=FakeReranker(), top_n=None)
    assert rerank.postprocess_nodes([], query_str="anything") == []
    assert asyncio.run(rerank.apostprocess_nodes([], query_str="anything")) == []
    starts = [e for e in event_log.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in event_log.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == 2 and len(ends) == 2 and all(e.nodes == [] for e in ends)
    assert all(isinstance(e.top_n, int) for e in starts)


def test_instrumentation_events_and_legacy_callback(event_log):
    debug = LlamaDebugHandler()
    rerank = RRPORerank(reranker=FakeReranker(), top_n=None, callback_manager=CallbackManager([debug]))
    out = rerank.postprocess_nodes(make_nodes(), query_str="capital city of France")
    start = next(e for e in event_log.events if isinstance(e, ReRankStartEvent))
    end = next(e for e in event_log.events if isinstance(e, ReRankEndEvent))
    assert start.top_n == len(PASSAGES) and start.model_name == "fake-overlap"
    assert start.query.query_str == "capital city of France"
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in out]
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1 and len(pairs[0][1].payload["nodes"]) == len(out)


def test_sync_and_async_agree_with_the_real_reranker(tiny_reranker):
    rerank = RRPORerank(reranker=tiny_reranker, top_n=4)
    nodes = make_nodes()
    before = dump(nodes)
    sync = rerank.postprocess_nodes(nodes, query_str="Who wrote Hamlet?")
    async_ = asyncio.run(rerank.apostprocess_nodes(nodes, query_bundle=QueryBundle("Who wrote Hamlet?")))
    assert dump(nodes) == before
    assert 1 <= len(sync) <= 4
    assert dump(sync) == dump(async_)
    expected = tiny_reranker.rerank("Who wrote Hamlet?", [
        n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes], top_n=4)
    assert [n.node.node_id for n in sync] == [f"n{i}" for i in expected.kept]


def test_async_path_does_not_block_the_event_loop():
    rerank = RRPORerank(reranker=FakeReranker(delay=0.4), top_n=3)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        out = await rerank.apostprocess_nodes(make_nodes(), query_str="Hamlet")
        task.cancel()
        return ticks, out

    ticks, out = asyncio.run(main())
    assert ticks >= 5 and out[0].node.node_id == "n0"


def test_model_is_loaded_lazily_once(tiny_cross_encoder_dir):
    rerank = RRPORerank(model=str(tiny_cross_encoder_dir), device="cpu", top_n=2)
    assert not rerank._holder.loaded  # nothing loaded before the first query
    first = rerank.postprocess_nodes(make_nodes(), query_str="Hamlet")
    model = rerank.reranker
    rerank.postprocess_nodes(make_nodes(), query_str="Paris")
    assert rerank.reranker is model and 1 <= len(first) <= 2


# -- FeedbackCollector -----------------------------------------------------------------


def build_engine(embed_model, reranker, **kwargs):
    docs = [Document(text=text, metadata={"title": title}, id_=f"doc-{title}") for title, text in PASSAGES]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    return index.as_query_engine(
        llm=MockLLM(), similarity_top_k=6,
        node_postprocessors=[RRPORerank(reranker=reranker, top_n=3)], **kwargs,
    )


@pytest.fixture()
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as s:
        yield s


def test_query_engine_records_a_full_record(minilm_embedding, tiny_cross_encoder_dir, store):
    from rrpo import Reranker

    tiny_reranker = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    tiny_reranker.settings.version = "tiny-v2"  # differs from the model's name: the record must say this
    engine = build_engine(minilm_embedding, tiny_reranker)
    with FeedbackCollector(store, query_engine=engine) as collector:
        response = engine.query("Who wrote the tragedy Hamlet?")
    rid = collector.record_id_for(response)
    assert rid == collector.last_record_id == response.metadata[RECORD_ID_KEY]
    record = store.get(rid)
    assert record.query == "Who wrote the tragedy Hamlet?"
    assert len(record.candidates) == 6  # as retrieved, before the rerank cut them
    assert all("relevance_score" not in c.metadata for c in record.candidates)
    assert record.kept_ids == [n.node.node_id for n in response.source_nodes]
    assert set(record.kept_ids) <= {c.id for c in record.candidates}
    assert record.kept_scores == [n.score for n in response.source_nodes]
    assert record.k == len(record.kept_ids) == response.source_nodes[0].node.metadata["rrpo_k"]
    assert record.answer == str(response) and record.latency_ms > 0
    assert record.reranker == tiny_reranker.version
    collector.rate(rid, 1.0, comment="correct")
    assert store.get(rid).rating == 1.0
    with pytest.raises(UnknownRecordError):
        collector.rate("not-a-record", 1.0)


def test_streaming_answer_is_stored_once_consumed(tiny_reranker, store):
    engine = build_engine(MockEmbedding(embed_dim=8), tiny_reranker, streaming=True)
    with FeedbackCollector(store) as collector:
        response = engine.query("capital of France")
        rid = collector.record_id_for(response)
        assert store.get(rid).answer is None
        text = "".join(response.response_gen)
    assert text and store.get(rid).answer == text


def test_async_query_is_recorded(tiny_reranker, store):
    engine = build_engine(MockEmbedding(embed_dim=8), tiny_reranker)
    with FeedbackCollector(store) as collector:
        response = asyncio.run(engine.aquery("highest mountain"))
    record = store.get(collector.record_id_for(response))
    assert record.query == "highest mountain" and record.answer == str(response)
    assert record.kept_ids == [n.node.node_id for n in response.source_nodes]


def test_collector_for_one_engine_ignores_others(store):
    mine = build_engine(MockEmbedding(embed_dim=8), FakeReranker())
    other = build_engine(MockEmbedding(embed_dim=8), FakeReranker())
    with FeedbackCollector(store, query_engine=mine) as collector:
        other.query("Mozart composer")
        assert len(store) == 0 and collector.last_record_id is None
        mine.query("Mozart composer")
    assert len(store) == 1
    mine.query("after detach")
    assert len(store) == 1


def test_eight_threads_times_25_queries_give_200_complete_records(store):
    engine = build_engine(MockEmbedding(embed_dim=8), FakeReranker())
    errors = []

    def worker(t):
        try:
            for i in range(25):
                engine.query(f"thread {t} question {i} Shakespeare")
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    with FeedbackCollector(store, query_engine=engine):
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    records = store.records()
    assert len(records) == 200
    assert {r.query for r in records} == {f"thread {t} question {i} Shakespeare" for t in range(8) for i in range(25)}
    for record in records:  # each record is complete and belongs to its own query
        assert len(record.candidates) == 6 and record.k == len(record.kept_ids) >= 1
        assert record.query in record.answer  # MockLLM echoes the prompt
        assert set(record.kept_ids) <= {c.id for c in record.candidates}
