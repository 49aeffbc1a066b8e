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
    assert start.top_n == len(PASSAGES) and start.model_name == "fake-overlap-v1"  # the version
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


def build_engine(embed_model, reranker, rerank_options=None, more_postprocessors=(), **kwargs):
    docs = [Document(text=text, metadata={"title": title}, id_=f"doc-{title}") for title, text in PASSAGES]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    rerank = RRPORerank(reranker=reranker, **{"top_n": 3, **(rerank_options or {})})
    return index.as_query_engine(
        llm=MockLLM(), similarity_top_k=6, node_postprocessors=[rerank, *more_postprocessors], **kwargs,
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
    assert rid == collector.last_record_id == getattr(response, RECORD_ID_KEY)
    record = store.get(rid)
    assert record.query == "Who wrote the tragedy Hamlet?"
    assert len(record.candidates) == 6  # as retrieved, before the rerank cut them
    assert all("relevance_score" not in c.metadata for c in record.candidates)
    assert record.kept_ids == [n.node.node_id for n in response.source_nodes]
    assert set(record.kept_ids) <= {c.id for c in record.candidates}
    assert record.kept_scores == [n.score for n in response.source_nodes]
    assert record.k == len(record.kept_ids) == response.source_nodes[0].node.metadata["rrpo_k"]
    assert record.answer == str(response) and record.latency_ms > 0
    from rrpo.adapter_support import reranker_version

    assert record.reranker == reranker_version(tiny_reranker) and record.reranker.startswith("tiny-v2@")
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


# -- issue #10: what a production user hits ------------------------------------------------

SECRETS = {
    "api_key": "sk-proj-ABCDEFGHIJKLMNOPQRSTUV123456",
    "token": "tok-SECRETVALUE0001",
    "private_key": "PRIVATE-SECRET-0002",
    "openai_key": "OPENAI-SECRET-0003",
    "pwd": "hunter2-SECRET-0004",
    "OPENAI_KEY": "sk-ABCDEFGHIJKLMNOPQRSTUVWX0005",
    "header": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0006",
}


def raw_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def secret_free(data: bytes) -> bool:
    return not any(part.encode() in data for value in SECRETS.values() for part in value.split()[-1:])


def test_feedback_stores_the_nodes_own_text_and_no_credentials(tmp_path):
    seen = []

    class Spy(FakeReranker):
        def rerank(self, query, candidates, **kw):
            seen.extend(c.text for c in candidates)
            return super().rerank(query, candidates, **kw)

    docs = [Document(text=PASSAGES[0][1], metadata={"title": "Hamlet", **SECRETS}, id_="doc-secret")]
    docs += [Document(text=text, metadata={"title": title}, id_=f"doc-{title}") for title, text in PASSAGES[1:]]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=8,
                                   node_postprocessors=[RRPORerank(reranker=Spy(), top_n=3)])
    path = tmp_path / "fb.db"
    with FeedbackStore(path) as store, FeedbackCollector(store) as collector:
        response = engine.query("Who wrote the tragedy Hamlet?")
        record = store.get(collector.record_id_for(response))
        store.export_jsonl(tmp_path / "out.jsonl")
    assert any("title: Hamlet" in text for text in seen)  # scored the framework's way...
    stored = next(c for c in record.candidates if c.text == PASSAGES[0][1])  # ...stored as written
    assert stored.title == "Hamlet" and set(stored.metadata) == {"title", "header"}
    assert stored.metadata["header"] == "Authorization: [REDACTED]"
    assert "[REDACTED]" in record.answer  # MockLLM echoed the prompt, metadata and all
    assert secret_free(raw_bytes(path)) and secret_free((tmp_path / "out.jsonl").read_bytes())


def test_pickle_reloads_from_the_path_or_refuses_loudly(tiny_cross_encoder_dir, tmp_path):
    import pickle

    import torch

    from rrpo import Reranker

    nodes, query = make_nodes(), "Who wrote Hamlet?"
    by_path = RRPORerank(model=str(tiny_cross_encoder_dir), device="cpu", top_n=4)
    expected = dump(by_path.postprocess_nodes(nodes, query_str=query))
    injected = RRPORerank(reranker=Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu"), top_n=4)
    for rerank in (by_path, injected):
        again = pickle.loads(pickle.dumps(rerank))
        assert dump(again.postprocess_nodes(nodes, query_str=query)) == expected
    trained = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with torch.no_grad():
        trained.scorer.classifier.bias.add_(1.0)  # weights changed in memory, not saved
    changed = RRPORerank(reranker=trained, top_n=4)
    with pytest.raises(pickle.PicklingError, match="save_pretrained"):
        pickle.dumps(changed)
    trained.save_pretrained(tmp_path / "trained")
    saved = RRPORerank(reranker=trained, model=str(tmp_path / "trained"), top_n=4)
    again = pickle.loads(pickle.dumps(saved))
    assert dump(again.postprocess_nodes(nodes, query_str=query)) == dump(saved.postprocess_nodes(nodes, query_str=query))
    assert again.reranker_version == saved.reranker_version != by_path.reranker_version


@pytest.mark.parametrize("typo", ["top_k", "topn", "k"])
def test_misspelled_options_are_rejected(typo):
    with pytest.raises(ValueError, match="top_n"):
        RRPORerank(reranker=FakeReranker(), **{typo: 2})


def test_duplicates_get_unique_ids_and_dedupe_drops_them(store):
    twice = make_nodes()[:3] + make_nodes()[:1]  # node n0 retrieved twice
    rerank = RRPORerank(reranker=FakeReranker(), top_n=4, dynamic_k=False)
    assert [n.node.node_id for n in rerank.postprocess_nodes(twice, query_str="Hamlet")].count("n0") == 2
    kept = RRPORerank(reranker=FakeReranker(), top_n=4, dynamic_k=False, dedupe=True).postprocess_nodes(
        twice, query_str="Hamlet")
    assert [n.node.node_id for n in kept] == ["n0", "n1", "n2"]
    # Through an index: two documents with the same text; the record stays consistent.
    docs = [Document(text=text, metadata={"title": title}) for title, text in PASSAGES[:3] + PASSAGES[:1]]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=4, node_postprocessors=[
        RRPORerank(reranker=FakeReranker(), top_n=4, dynamic_k=False, dedupe=True)])
    with FeedbackCollector(store) as collector:
        response = engine.query("Hamlet tragedy")
    record = store.get(collector.record_id_for(response))
    texts = [n.node.get_content() for n in response.source_nodes]
    assert len(texts) == len(set(texts)) == 3 and record.k == 3
    ids = [c.id for c in record.candidates]
    assert len(ids) == len(set(ids)) == 4 and set(record.kept_ids) <= set(ids)


def test_returned_nodes_share_no_metadata_with_the_index():
    docs = [Document(text=text, metadata={"title": title, "info": {"tags": ["play"]}}, id_=f"doc-{title}")
            for title, text in PASSAGES]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=4,
                                   node_postprocessors=[RRPORerank(reranker=FakeReranker(), top_n=2)])
    node = engine.query("Hamlet tragedy").source_nodes[0]
    node.node.metadata["info"]["tags"].append("edited")
    assert index.docstore.get_node(node.node.node_id).metadata["info"] == {"tags": ["play"]}


def test_records_and_events_name_the_weights_that_ranked(tiny_cross_encoder_dir, store, event_log):
    import torch

    from rrpo import Reranker
    from rrpo.adapter_support import reranker_version

    base = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    base_version = reranker_version(base)
    engine = build_engine(MockEmbedding(embed_dim=8), base)
    with FeedbackCollector(store) as collector:
        first = engine.query("Hamlet")
        optimizer = torch.optim.SGD(base.parameters(), lr=0.1)  # one training step, in memory
        base.score_pairs(["Hamlet"], [base._check("Hamlet", ["Hamlet is a play."])])[0].scores.sum().backward()
        optimizer.step()
        second = engine.query("Hamlet")
    names = [e.model_name for e in event_log.events if isinstance(e, ReRankStartEvent)]
    trained = store.get(collector.record_id_for(second)).reranker
    assert store.get(collector.record_id_for(first)).reranker == base_version == names[0]
    assert trained == names[1] == reranker_version(base) != base_version and trained.startswith(base.version)


def test_record_id_is_not_a_key_of_response_metadata(store):
    engine = build_engine(MockEmbedding(embed_dim=8), FakeReranker())
    with FeedbackCollector(store) as collector:
        response = engine.query("capital of France")
    assert RECORD_ID_KEY not in response.metadata
    assert set(response.metadata) == {n.node.node_id for n in response.source_nodes}
    assert all(isinstance(value, dict) for value in response.metadata.values())
    assert collector.record_id_for(response) == response.rrpo_record_id in store


def test_top_n_per_call_and_per_request_in_a_query_engine():
    nodes = make_nodes()
    rerank = RRPORerank(reranker=FakeReranker(), top_n=5, dynamic_k=False)
    assert len(rerank.postprocess_nodes(nodes, query_str="Hamlet", top_n=2)) == 2
    assert len(asyncio.run(rerank.apostprocess_nodes(nodes, query_str="Hamlet", top_n=1))) == 1
    assert len(rerank.postprocess_nodes(nodes, query_str="Hamlet")) == 5  # the field again
    index = VectorStoreIndex.from_documents(
        [Document(text=text) for _, text in PASSAGES], embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=8, node_postprocessors=[rerank])
    sizes = {}

    def ask(top_n):
        with rerank.override(top_n=top_n):
            time.sleep(0.01)  # overlap the two requests
            sizes[top_n] = len(engine.query("Hamlet").source_nodes)

    threads = [threading.Thread(target=ask, args=(n,)) for n in (1, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sizes == {1: 1, 3: 3} and len(engine.query("Hamlet").source_nodes) == 5
    with pytest.raises(ValueError, match="top_n"):
        rerank.postprocess_nodes(nodes, query_str="Hamlet", top_n=0)


def test_min_k_zero_abstains_and_relevance_is_calibrated(tiny_cross_encoder_dir, store):
    import math

    import torch
    from llama_index.core.postprocessor import SimilarityPostprocessor

    from rrpo import Reranker

    reranker = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    nodes = make_nodes()
    raw = reranker.score("Hamlet", [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])
    kept = RRPORerank(reranker=reranker, top_n=8, dynamic_k=False).postprocess_nodes(nodes, query_str="Hamlet")
    for node in kept:  # the sigmoid of the logit: in [0, 1], one threshold for all queries
        index = int(node.node.node_id[1:])
        assert node.score == node.node.metadata["relevance_score"] == pytest.approx(1 / (1 + math.exp(-raw[index])))
    cutoff = sorted(n.score for n in kept)[4]
    engine = build_engine(MockEmbedding(embed_dim=8), reranker, {"top_n": 6, "dynamic_k": False},
                          [SimilarityPostprocessor(similarity_cutoff=cutoff)])
    thresholded = engine.query("Hamlet").source_nodes
    assert thresholded and all(n.score >= cutoff for n in thresholded)
    with torch.no_grad():
        reranker.stop_head.out.bias.fill_(1e4)  # a STOP head that says "nothing here is relevant"
    abstain = build_engine(MockEmbedding(embed_dim=8), reranker, {"min_k": 0})
    with FeedbackCollector(store) as collector:
        response = abstain.query("Who painted the Mona Lisa?")
    record = store.get(collector.record_id_for(response))
    assert response.source_nodes == [] and record.k == 0 and record.kept_ids == []
    assert len(record.candidates) == 6
    assert len(build_engine(MockEmbedding(embed_dim=8), reranker).query("x").source_nodes) == 1  # min_k=1


class CountingReranker:
    """The real tiny reranker, counting how many queries each rerank_batch call got."""

    def __init__(self, inner) -> None:
        self.inner, self.sizes, self.version, self.name_or_path = inner, [], inner.version, inner.name_or_path
        self.lock = threading.Lock()

    def rerank_batch(self, queries, candidate_lists, **kw):
        with self.lock:
            self.sizes.append(len(queries))
        return self.inner.rerank_batch(queries, candidate_lists, **kw)


def test_micro_batching_concurrent_queries_in_a_query_engine(tiny_reranker):
    counting = CountingReranker(tiny_reranker)
    docs = [Document(text=text, metadata={"title": title}, id_=f"doc-{title}") for title, text in PASSAGES]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))

    def engine_with(**options):
        rerank = RRPORerank(reranker=counting, top_n=3, **options)
        return index.as_query_engine(llm=MockLLM(), similarity_top_k=6, node_postprocessors=[rerank])

    plain = engine_with()
    solo = {q: [n.node.get_content() for n in plain.query(q).source_nodes] for q in ("Hamlet", "Paris", "Everest")}
    assert counting.sizes == [1, 1, 1]  # off by default
    engine = engine_with(batch_wait_ms=500.0, max_batch_queries=8)
    barrier, got = threading.Barrier(8), {}

    def worker(i):
        query = ("Hamlet", "Paris", "Everest")[i % 3]
        barrier.wait()
        got[i] = (query, [n.node.get_content() for n in engine.query(query).source_nodes])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batched = counting.sizes[3:]
    assert sum(batched) == 8 and len(batched) < 8 and max(batched) > 1
    assert all(ids == solo[query] for query, ids in got.values())  # same answers, fewer passes

    async def many():
        return await asyncio.gather(*(engine.aquery(q) for q in ("Hamlet", "Paris", "Everest", "Hamlet")))

    before = len(counting.sizes)
    responses = asyncio.run(many())
    assert [[n.node.get_content() for n in r.source_nodes] for r in responses][0] == solo["Hamlet"]
    assert len(counting.sizes) - before < 4
