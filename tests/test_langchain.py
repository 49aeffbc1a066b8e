"""langchain_rrpo: the document compressor and the feedback callback handler, on real
langchain-core / langchain-classic objects (Documents, InMemoryVectorStore,
ContextualCompressionRetriever, runnable chains, callback managers)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_rrpo import RERANK_EVENT, FeedbackCallbackHandler, RRPORerank
from rrpo.feedback import FeedbackStore, UnknownRecordError

from rrpo import Selection

# The same corpus and fake as tests/test_llama_index.py (kept here so this file needs
# no llama-index).
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


def make_docs() -> list[Document]:
    return [
        Document(page_content=text, metadata={"title": title, "source": "wiki", "rank": i}, id=f"d{i}")
        for i, (title, text) in enumerate(PASSAGES)
    ]


@pytest.fixture(scope="module")
def tiny_reranker(tiny_cross_encoder_dir):
    from rrpo import Reranker

    return Reranker.from_pretrained(str(tiny_cross_encoder_dir), device="cpu")


class CustomEvents(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events = []

    def on_custom_event(self, name, data, *, run_id, **kwargs):
        self.events.append((name, data, run_id))


def compression_retriever(reranker, embeddings=None, k=6, **kwargs):
    store = InMemoryVectorStore(embeddings or DeterministicFakeEmbedding(size=16))
    store.add_documents(make_docs())
    return ContextualCompressionRetriever(
        base_compressor=RRPORerank(reranker=reranker, top_n=3, **kwargs),
        base_retriever=store.as_retriever(search_kwargs={"k": k}),
    )


def qa_chain(retriever):
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}\nAnswer:")
    echo_llm = RunnableLambda(lambda value: "ANSWER to " + value.to_string().rsplit("Question: ", 1)[1].split("\n")[0])
    format_docs = RunnableLambda(lambda docs: "\n".join(d.page_content for d in docs))
    return {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | echo_llm | StrOutputParser()


# -- RRPORerank ---------------------------------------------------------------------------


def test_compress_copies_documents_keeps_metadata_and_adds_scores():
    docs = make_docs()
    before = copy.deepcopy(docs)
    out = RRPORerank(reranker=FakeReranker(), top_n=5).compress_documents(docs, "who wrote the tragedy Hamlet?")
    assert docs == before and all(o is not d for o in out for d in docs)
    assert [d.id for d in out] == ["d0", "d1"]
    meta = out[0].metadata
    assert meta["source"] == "wiki" and meta["title"] == "Hamlet" and meta["rank"] == 0
    assert meta["rrpo_rank"] == 1 and meta["rrpo_k"] == 2 and isinstance(meta["relevance_score"], float)
    assert out[0].page_content == docs[0].page_content


def test_limits_and_empty_input():
    docs = make_docs()
    assert len(RRPORerank(reranker=FakeReranker(), top_n=4, dynamic_k=False).compress_documents(docs, "x")) == 4
    assert len(RRPORerank(reranker=FakeReranker(), top_n=None, dynamic_k=False).compress_documents(docs, "x")) == 8
    assert RRPORerank(reranker=FakeReranker()).compress_documents([], "anything") == []
    assert asyncio.run(RRPORerank(reranker=FakeReranker()).acompress_documents([], "anything")) == []
    with pytest.raises(ValueError, match="min_k"):
        RRPORerank(reranker=FakeReranker(), top_n=1, min_k=2)


def test_sync_and_async_agree_with_the_real_reranker(tiny_reranker):
    docs = make_docs()
    before = copy.deepcopy(docs)
    rerank = RRPORerank(reranker=tiny_reranker, top_n=4)
    sync = rerank.compress_documents(docs, "Who wrote Hamlet?")
    async_ = asyncio.run(rerank.acompress_documents(docs, "Who wrote Hamlet?"))
    assert docs == before and 1 <= len(sync) <= 4
    assert sync == async_


def test_async_compress_does_not_block_the_event_loop():
    rerank = RRPORerank(reranker=FakeReranker(delay=0.4))

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        out = await rerank.acompress_documents(make_docs(), "Hamlet tragedy")
        task.cancel()
        return ticks, out

    ticks, out = asyncio.run(main())
    assert ticks >= 5 and out[0].id == "d0"


def test_custom_event_inside_compression_retriever_sync_and_async():
    retriever = compression_retriever(FakeReranker(), k=8)
    events = CustomEvents()
    docs = retriever.invoke("Paris capital France", config={"callbacks": [events]})
    adocs = asyncio.run(retriever.ainvoke("Paris capital France", config={"callbacks": [events]}))
    assert docs == adocs and docs[0].id == "d2"
    assert [name for name, _, _ in events.events] == [RERANK_EVENT, RERANK_EVENT]
    data = events.events[0][1]
    assert data["kept_ids"] == [d.id for d in docs] and data["k"] == len(docs)
    assert len(data["candidate_ids"]) == 8 and data["reranker"] == "fake-overlap-v1"
    # Outside any run there is nobody to tell, and that is not an error.
    assert RRPORerank(reranker=FakeReranker()).compress_documents(make_docs(), "Paris")


# -- FeedbackCallbackHandler ---------------------------------------------------------------


@pytest.fixture()
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb.db") as s:
        yield s


def test_chain_with_handler_records_a_full_record(tiny_reranker, store):
    from langchain_huggingface import HuggingFaceEmbeddings

    from rrpo.models import packaged_minilm_dir

    embeddings = HuggingFaceEmbeddings(model_name=str(packaged_minilm_dir()), model_kwargs={"device": "cpu"})
    retriever = compression_retriever(tiny_reranker, embeddings=embeddings)
    chain = qa_chain(retriever)
    handler = FeedbackCallbackHandler(store)
    run_id = uuid.uuid4()
    answer = chain.invoke("Who wrote the tragedy Hamlet?", config={"callbacks": [handler], "run_id": run_id})
    rid = handler.record_id_for(run_id)
    assert rid == handler.last_record_id == str(run_id)
    record = store.get(rid)
    kept = retriever.invoke("Who wrote the tragedy Hamlet?")
    assert record.query == "Who wrote the tragedy Hamlet?"
    assert len(record.candidates) == 6 and all("rrpo_k" not in c.metadata for c in record.candidates)
    assert record.candidates[0].title in {t for t, _ in PASSAGES}
    assert record.kept_ids == [d.id for d in kept] and record.k == len(kept)
    assert record.kept_scores == [d.metadata["relevance_score"] for d in kept]
    assert record.answer == answer == "ANSWER to Who wrote the tragedy Hamlet?"
    assert record.reranker == tiny_reranker.version and record.latency_ms > 0
    handler.rate(rid, 0.0, comment="wrong")
    assert store.get(rid).rating == 0.0
    with pytest.raises(UnknownRecordError):
        handler.rate("unknown-id", 1.0)


def test_async_chain_and_retriever_as_root(store):
    retriever = compression_retriever(FakeReranker())
    handler = FeedbackCallbackHandler(store)
    answer = asyncio.run(qa_chain(retriever).ainvoke("Berlin capital Germany", config={"callbacks": [handler]}))
    record = store.get(handler.last_record_id)
    assert record.answer == answer and record.kept_ids[0] == "d3"
    docs = retriever.invoke("highest mountain Everest", config={"callbacks": [handler]})
    record = store.get(handler.last_record_id)
    assert record.query == "highest mountain Everest" and record.answer is None
    assert record.kept_ids == [d.id for d in docs] and len(store) == 2


def test_failed_chain_leaves_no_record(store):
    retriever = compression_retriever(FakeReranker())

    def boom(_):
        raise RuntimeError("reader down")

    chain = {"context": retriever, "question": RunnablePassthrough()} | RunnableLambda(boom)
    handler = FeedbackCallbackHandler(store)
    with pytest.raises(RuntimeError, match="reader down"):
        chain.invoke("Mozart", config={"callbacks": [handler]})
    assert len(store) == 0 and not handler._open and not handler._parent


def test_eight_threads_times_25_queries_give_200_complete_records(store):
    chain = qa_chain(compression_retriever(FakeReranker()))
    handler = FeedbackCallbackHandler(store)
    errors = []

    def worker(t):
        try:
            for i in range(25):
                chain.invoke(f"thread {t} question {i} Shakespeare", config={"callbacks": [handler]})
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    records = store.records()
    assert len(records) == 200
    assert {r.query for r in records} == {f"thread {t} question {i} Shakespeare" for t in range(8) for i in range(25)}
    for record in records:
        assert record.answer == f"ANSWER to {record.query}"
        assert len(record.candidates) == 6 and record.k == len(record.kept_ids) >= 1
        assert set(record.kept_ids) <= {c.id for c in record.candidates}
    assert not handler._open and not handler._parent  # nothing left behind
