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
from langchain_core.retrievers import BaseRetriever
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_rrpo import RERANK_EVENT, FeedbackCallbackHandler, RRPORerank
from rrpo.feedback import FeedbackStore, UnknownRecordError

from rrpo import Candidate, Selection

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
    from rrpo.adapter_support import reranker_version

    assert record.reranker == reranker_version(tiny_reranker) and record.latency_ms > 0
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


def secret_free(data: bytes) -> bool:
    return not any(value.split()[-1].encode() in data for value in SECRETS.values())


class ListRetriever(BaseRetriever):
    """A real LangChain retriever that returns fresh copies of fixed documents (no ids)."""

    docs: list

    def _get_relevant_documents(self, query, *, run_manager):
        return [Document(page_content=d.page_content, metadata=dict(d.metadata)) for d in self.docs]


def records_of(store):
    return {r.query: r for r in store.records()}


def test_feedback_stores_no_credentials_from_metadata_or_text(tmp_path):
    docs = [Document(page_content=PASSAGES[0][1] + " Authorization: Bearer abcdefghijklmnopqrstuvwxyz0006",
                     metadata={"title": "Hamlet", **SECRETS})]
    docs += [Document(page_content=text, metadata={"title": title}) for title, text in PASSAGES[1:]]
    retriever = ContextualCompressionRetriever(base_compressor=RRPORerank(reranker=FakeReranker(), top_n=3),
                                               base_retriever=ListRetriever(docs=docs))
    path = tmp_path / "fb.db"
    with FeedbackStore(path) as store:
        handler = FeedbackCallbackHandler(store)
        qa_chain(retriever).invoke("Hamlet tragedy, my password=hunter2-SECRET-0004", config={"callbacks": [handler]})
        record = store.get(handler.last_record_id)
        store.export_jsonl(tmp_path / "out.jsonl")
    assert record.query == "Hamlet tragedy, my password=[REDACTED]"
    assert record.candidates[0].text.startswith(PASSAGES[0][1])
    assert set(record.candidates[0].metadata) == {"title", "header"}
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("fb.db*"))
    assert secret_free(raw) and secret_free((tmp_path / "out.jsonl").read_bytes())


def test_pickle_reloads_from_the_path_or_refuses_loudly(tiny_cross_encoder_dir, tmp_path):
    import pickle

    import torch

    from rrpo import Reranker

    docs, query = make_docs(), "Who wrote Hamlet?"
    injected = RRPORerank(reranker=Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu"), top_n=4)
    expected = injected.compress_documents(docs, query)
    by_path = RRPORerank(model=str(tiny_cross_encoder_dir), device="cpu", top_n=4)
    for rerank in (injected, by_path, by_path):  # unloaded, then loaded
        assert pickle.loads(pickle.dumps(rerank)).compress_documents(docs, query) == expected
        by_path.compress_documents(docs, query)
    retriever = compression_retriever(injected.reranker, k=8)  # a whole retriever, as chains get pickled
    assert pickle.loads(pickle.dumps(retriever)).invoke(query) == retriever.invoke(query)
    trained = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    with torch.no_grad():
        trained.scorer.classifier.bias.add_(1.0)
    with pytest.raises(pickle.PicklingError, match="save_pretrained"):
        pickle.dumps(compression_retriever(trained))
    trained.save_pretrained(tmp_path / "trained")
    saved = RRPORerank(reranker=trained, model=str(tmp_path / "trained"), top_n=4)
    assert pickle.loads(pickle.dumps(saved)).compress_documents(docs, query) == saved.compress_documents(docs, query)


@pytest.mark.parametrize("typo", ["top_k", "topn", "k"])
def test_misspelled_options_are_rejected(typo):
    with pytest.raises(ValueError, match="top_n"):
        RRPORerank(reranker=FakeReranker(), **{typo: 2})


def test_llm_chat_model_and_tool_runs_leave_no_state(store, monkeypatch):
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.tools import tool

    import langchain_rrpo.feedback as feedback_module

    @tool
    def shout(text: str) -> str:
        """Upper-case the text."""
        return text.upper()

    handler = FeedbackCallbackHandler(store)
    config = {"callbacks": [handler]}
    llm, chat = FakeListLLM(responses=["ok"]), FakeListChatModel(responses=["ok"])
    for _ in range(17):
        llm.invoke("hello", config=config)
        chat.invoke("hello", config=config)
        shout.invoke("hello", config=config)
    assert not handler._open and not handler._parent and len(store) == 0
    monkeypatch.setattr(feedback_module, "_REMEMBERED_RUNS", 3)
    chain = qa_chain(compression_retriever(FakeReranker()))
    run_ids = [uuid.uuid4() for _ in range(5)]
    for run_id in run_ids:
        chain.invoke("Paris capital", config={"callbacks": [handler], "run_id": run_id})
    assert len(handler._recorded) == 3 and not handler._open
    assert handler.record_id_for(run_ids[0]) == str(run_ids[0])  # older: found in the store


def test_each_retrieval_of_a_chain_is_its_own_record(store):
    retriever = compression_retriever(FakeReranker(), k=8)
    follow_up = RunnableLambda(lambda docs: f"capital of Germany, not {docs[0].metadata['title']}")
    chain = retriever | follow_up | retriever | RunnableLambda(lambda docs: " ".join(d.id for d in docs))
    run_id = uuid.uuid4()
    answer = chain.invoke("Paris capital France", config={"callbacks": [FeedbackCallbackHandler(store)],
                                                          "run_id": run_id})
    first, second = store.get(str(run_id)), store.get(f"{run_id}:2")
    assert len(store) == 2
    assert first.query == "Paris capital France" and first.kept_ids[0] == "d2"
    assert second.query == "capital of Germany, not Paris" and second.kept_ids[0] == "d3"
    for record in (first, second):
        assert len(record.candidates) == 8 and set(record.kept_ids) <= {c.id for c in record.candidates}
        assert record.metadata["root_run_id"] == str(run_id) and record.answer == answer
    assert [first.metadata["retrieval"], second.metadata["retrieval"]] == [1, 2]


def test_duplicate_texts_without_ids_stay_distinct_and_dedupe_drops_them(store):
    docs = [Document(page_content=text, metadata={"title": title}) for title, text in PASSAGES[:3] + PASSAGES[:2]]
    handler = FeedbackCallbackHandler(store)
    for dedupe in (False, True):
        retriever = ContextualCompressionRetriever(
            base_compressor=RRPORerank(reranker=FakeReranker(), top_n=5, dynamic_k=False, dedupe=dedupe),
            base_retriever=ListRetriever(docs=docs))
        out = retriever.invoke(f"Hamlet tragedy dedupe={dedupe}", config={"callbacks": [handler]})
        record = store.get(handler.last_record_id)
        ids = [c.id for c in record.candidates]
        assert len(ids) == len(set(ids)) == 5 and set(record.kept_ids) <= set(ids)
        assert record.k == len(record.kept_ids) == len(out) == (3 if dedupe else 5)
        assert len({d.page_content for d in out}) == 3


def test_returned_documents_share_no_metadata_with_the_vector_store():
    vectorstore = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    vectorstore.add_documents([Document(page_content=t, metadata={"title": n, "info": {"tags": ["x"]}}, id=n)
                               for n, t in PASSAGES])
    retriever = ContextualCompressionRetriever(base_compressor=RRPORerank(reranker=FakeReranker(), top_n=3),
                                               base_retriever=vectorstore.as_retriever(search_kwargs={"k": 8}))
    doc = retriever.invoke("Hamlet tragedy")[0]
    doc.metadata["info"]["tags"].append("edited")
    assert vectorstore.get_by_ids([doc.id])[0].metadata["info"] == {"tags": ["x"]}


def test_records_and_events_name_the_weights_that_ranked(tiny_cross_encoder_dir, store):
    import torch

    from rrpo import Reranker
    from rrpo.adapter_support import reranker_version

    reranker = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    base_version = reranker_version(reranker)
    retriever, events = compression_retriever(reranker), CustomEvents()
    handler = FeedbackCallbackHandler(store)
    retriever.invoke("Hamlet", config={"callbacks": [handler, events]})
    with torch.no_grad():
        reranker.stop_head.out.bias.add_(0.5)  # trained in memory, not saved
    retriever.invoke("Hamlet", config={"callbacks": [handler, events]})
    versions = [r.reranker for r in store.records()]
    assert versions == [e[1]["reranker"] for e in events.events]
    assert versions[0] == base_version != versions[1] == reranker_version(reranker)
    assert all(v.startswith(reranker.version + "@") for v in versions)


def test_top_n_per_call_and_per_request_in_a_chain():
    docs = make_docs()
    rerank = RRPORerank(reranker=FakeReranker(), top_n=5, dynamic_k=False)
    assert len(rerank.compress_documents(docs, "Hamlet", top_n=2)) == 2
    assert len(asyncio.run(rerank.acompress_documents(docs, "Hamlet", top_n=1))) == 1
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents(docs)
    retriever = ContextualCompressionRetriever(base_compressor=rerank,
                                               base_retriever=store.as_retriever(search_kwargs={"k": 8}))
    chain = qa_chain(retriever)
    sizes = {}

    def ask(top_n):
        with rerank.override(top_n=top_n):
            time.sleep(0.01)
            sizes[top_n] = len(retriever.invoke("Hamlet"))
            chain.invoke("Hamlet")

    threads = [threading.Thread(target=ask, args=(n,)) for n in (1, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sizes == {1: 1, 3: 3} and len(retriever.invoke("Hamlet")) == 5


def test_min_k_zero_abstains_and_relevance_is_calibrated(tiny_cross_encoder_dir, store):
    import math

    import torch

    from rrpo import Reranker

    reranker = Reranker.from_pretrained(tiny_cross_encoder_dir, device="cpu")
    docs = make_docs()
    raw = reranker.score("Hamlet", [c for c in map(lambda d: d.page_content, docs)])
    out = RRPORerank(reranker=reranker, top_n=None, dynamic_k=False).compress_documents(docs, "Hamlet")
    by_id = {d.id: d.metadata["relevance_score"] for d in out}
    assert all(0.0 <= s <= 1.0 for s in by_id.values())
    titled = reranker.score("Hamlet", [Candidate(id=d.id, text=d.page_content, title=d.metadata["title"]) for d in docs])
    assert [by_id[d.id] for d in docs] == pytest.approx([1 / (1 + math.exp(-s)) for s in titled])
    assert raw  # the untitled scores exist too; the adapter passes titles
    with torch.no_grad():
        reranker.stop_head.out.bias.fill_(1e4)  # "nothing here is relevant"
    handler = FeedbackCallbackHandler(store)
    abstain = compression_retriever(reranker, min_k=0)
    assert abstain.invoke("Who painted the Mona Lisa?", config={"callbacks": [handler]}) == []
    record = store.get(handler.last_record_id)
    assert record.k == 0 and record.kept_ids == [] and len(record.candidates) == 6
    assert len(compression_retriever(reranker).invoke("x")) == 1  # min_k=1 keeps one


def test_micro_batching_concurrent_queries_through_a_retriever(tiny_reranker):
    class Counting:
        def __init__(self, inner):
            self.inner, self.sizes, self.version = inner, [], inner.version
            self.lock = threading.Lock()

        def rerank_batch(self, queries, candidate_lists, **kw):
            with self.lock:
                self.sizes.append(len(queries))
            return self.inner.rerank_batch(queries, candidate_lists, **kw)

    counting = Counting(tiny_reranker)
    queries = ["Hamlet", "Paris", "Everest", "Mozart"]
    solo = {q: [d.id for d in compression_retriever(counting).invoke(q)] for q in queries}
    retriever = compression_retriever(counting, batch_wait_ms=500.0, max_batch_queries=8)
    counting.sizes.clear()
    barrier, got = threading.Barrier(8), []

    def worker(i):
        barrier.wait()
        got.append((queries[i % 4], [d.id for d in retriever.invoke(queries[i % 4])]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counting.sizes) == 8 and len(counting.sizes) < 8
    assert all(ids == solo[q] for q, ids in got)
