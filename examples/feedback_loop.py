"""The live loop: a deployed LlamaIndex pipeline's own feedback makes its reranker better.

Everything is real and offline:

* a LlamaIndex query engine over the SQuAD v1.1 dev corpus (../shared/data) with a BM25
  retriever (``rrpo.data.BM25Index`` as a LlamaIndex retriever);
* ``RRPORerank`` starting from a relevance-SFT reranker trained on HotpotQA (another
  domain, as a user's would be), logging each selection's propensity, optionally
  exploring (``--explore``);
* SmolLM2-135M-Instruct (the packaged GGUF) served by llama-cpp-python's
  OpenAI-compatible server on loopback, reached through LlamaIndex's ``OpenAILike``;
* ``FeedbackCollector`` records every query; a simulated user gives a thumbs up when the
  answer contains a gold answer (a rule the trainer never sees);
* ``rrpo train --feedback``: the rated-good answers are pseudo-gold targets of the
  reader's likelihood (``gold_loglik``), the user's rating scores the logged selection
  (off-policy, importance-weighted);
* the retrained reranker swaps into the same pipeline, which answers held-out questions.

    python examples/feedback_loop.py --init runs/sft-minilm-hotpot/model          # ~100 queries
    python examples/feedback_loop.py --quick --init DIR --out /tmp/loop            # a tiny loop

``benchmarks/feedback_loop.py`` runs it at benchmark size and reports before vs after.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = "squad-dev-corpus.jsonl.gz"
QUESTIONS = "squad-dev-questions.{split}.jsonl.gz"
# The reader sees what rrpo's trainer shows it (rrpo.prompts.build_prompt's wording).
QA_TEMPLATE = (
    "Answer the question using the numbered passages. "
    "Reply with a short answer only (a few words), no explanation.\n\n"
    "{context_str}\n\nQuestion: {query_str}\nAnswer:"
)
# Pseudo-gold likelihood scores every sampled selection; the rating adds to the logged
# one (importance-weighted). Half weight: the rating is one bit, the likelihood dense.
REWARD = "gold_loglik+0.5*user_rating"


# -- parts ---------------------------------------------------------------------------------


def bm25_retriever(index, top_k: int):
    """``rrpo.data.BM25Index`` as a LlamaIndex retriever (node ids = passage ids, so
    feedback records name real passages)."""
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    class BM25Retriever(BaseRetriever):
        def _retrieve(self, query_bundle):
            hits = index.search([query_bundle.query_str], k=top_k)[0]
            return [NodeWithScore(node=TextNode(id_=c.id, text=c.text, metadata={"title": c.title}), score=c.score)
                    for c in hits]  # fmt: skip

    return BM25Retriever()


@dataclass
class Server:
    """llama-cpp-python's OpenAI-compatible server, started here, on loopback."""

    process: subprocess.Popen
    base_url: str
    log: Path | None = None
    timeout: float = 300.0
    model: str = "smollm2"

    def wait_until_up(self) -> "Server":
        """Loading takes a while on a busy CPU: start it first, wait when it is needed."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        text = self.log.read_text(errors="replace")[-2000:] if self.log else ""
        raise RuntimeError(f"the llama-cpp server did not come up: {text}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_server(log: Path, threads: int = 2, timeout: float = 300.0, logits_all: bool = False) -> Server:
    """``logits_all``: needed only to read likelihoods from the server (echo log-probs);
    it computes the vocabulary logits at every prompt position, so answers get slower."""
    from rrpo.models import packaged_smollm2_gguf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_smollm2_gguf()),
               "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--logits_all", str(logits_all).lower(), "--n_threads", str(threads), "--verbose", "false"]  # fmt: skip
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    return Server(process, f"http://127.0.0.1:{port}/v1", log=log, timeout=timeout)


ANSWER_TOKENS = 24  # SmolLM2 restates the question before the answer: room for both


def openai_like_llm(server: Server, max_tokens: int = ANSWER_TOKENS):
    """The framework's own OpenAI-like LLM class, pointed at the local server."""
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError as err:
        raise ImportError("this example needs llama-index-llms-openai-like: pip install llama-index-llms-openai-like") from err
    return OpenAILike(model=server.model, api_base=server.base_url, api_key="local", is_chat_model=True,
                      max_tokens=max_tokens, temperature=0.0, timeout=120)  # fmt: skip


def build_engine(retriever, rerank, llm):
    from llama_index.core import PromptTemplate
    from llama_index.core.query_engine import RetrieverQueryEngine

    return RetrieverQueryEngine.from_args(retriever, llm=llm, node_postprocessors=[rerank],
                                          text_qa_template=PromptTemplate(QA_TEMPLATE), response_mode="compact")


def thumbs(answer: str, golds) -> float:
    """The simulated user: thumbs up (1) when the answer contains a gold answer."""
    from rrpo.rewards import contains_score

    return contains_score(answer or "", golds)


# -- the loop ------------------------------------------------------------------------------


def serve(engine, collector, questions, rate: bool) -> list[dict]:
    """Answer each question through the pipeline; the user rates (``rate``); one row per
    question with what the benchmark compares."""
    from rrpo.prompts import context_words
    from rrpo.rewards import f1_score

    rows = []
    for q in questions:
        started = time.perf_counter()
        response = engine.query(q.query)
        latency = (time.perf_counter() - started) * 1000.0
        answer = str(response).strip()
        kept = [n.node for n in response.source_nodes]
        words = context_words([_candidate(n) for n in kept])
        up = thumbs(answer, q.answers)
        if rate:
            collector.rate(collector.record_id_for(response), up)
        rows.append({"id": q.id, "thumbs_up": up, "f1": f1_score(answer, q.answers), "words": words,
                     "latency_ms": latency, "k": len(kept), "answer": answer})  # fmt: skip
    return rows


def _candidate(node):
    from rrpo import Candidate

    return Candidate(node.node_id, node.get_content(), title=node.metadata.get("title", ""))


def train_from_store(store: Path, init: str, out: Path, reader: str, steps: int, extra: list[str] = ()) -> Path:
    """``rrpo train --feedback``: pseudo-gold likelihood for every sample plus the user's
    rating for the logged selection (importance-weighted)."""
    from rrpo.cli import main as rrpo

    argv = ["train", "--feedback", str(store), "--rated-only", "--init", init, "--reader", reader,
            "--reward", REWARD, "--max-steps", str(steps), "--out", str(out),
            "--overwrite", "--device", "cpu", "--checkpoint-every", "0", "--max-k", "4",
            "--group-size", "4", "--queries-per-step", "4", "--progress", "false", *extra]  # fmt: skip
    code = rrpo(argv)
    if code != 0:
        raise RuntimeError(f"rrpo train failed ({code})")
    return out / "model"


def load_questions(split: str, limit: int, top_k: int, index):
    from rrpo.data import load_corpus_questions, shared_data_dir

    data = shared_data_dir()
    return load_corpus_questions(data / CORPUS, data / QUESTIONS.format(split=split), k=top_k, limit=limit, index=index)


def run_loop(init: str, out: Path, traffic: int, dev: int, steps: int, top_k: int = 10, top_n: int = 4,
             explore: float = 0.0, server: Server | None = None, train_reader: str | None = None,
             train_extra: list[str] = ()) -> dict:
    """The whole loop; returns the per-question rows before and after and the paths."""
    from llama_index_rrpo import FeedbackCollector, RRPORerank
    from rrpo import Reranker
    from rrpo.data import BM25Index, load_corpus, shared_data_dir
    from rrpo.feedback import FeedbackStore

    out.mkdir(parents=True, exist_ok=True)
    own_server = server is None
    server = server or start_server(out / "llama-server.log")
    try:
        index = BM25Index(load_corpus(shared_data_dir() / CORPUS))
        train_q = load_questions("train", traffic, top_k, index)
        dev_q = load_questions("dev", dev, top_k, index)
        retriever, llm = bm25_retriever(index, top_k), openai_like_llm(server.wait_until_up())
        before = Reranker.from_pretrained(init, device="cpu")
        rerank = RRPORerank(reranker=before, model=init, top_n=top_n, explore_epsilon=explore, explore_seed=0)
        store_path = out / "feedback.db"
        if store_path.exists():
            store_path.unlink()
        with FeedbackStore(store_path) as store:
            engine = build_engine(retriever, rerank, llm)
            with FeedbackCollector(store, query_engine=engine) as collector:
                traffic_rows = serve(engine, collector, train_q, rate=True)  # production traffic, rated
            print(f"traffic: {len(traffic_rows)} rated queries, thumbs-up {_mean(traffic_rows, 'thumbs_up'):.3f}")
        # The trainer's reader: the same SmolLM2 weights, in process (transformers), where
        # prefixes of a ranking share their key/value cache.
        reader = train_reader or "smollm2-135m"
        model = train_from_store(store_path, init, out / "rrpo", reader, steps, list(train_extra))
        rows = {}
        for label, path in (("before", init), ("after", str(model))):
            policy = Reranker.from_pretrained(path, device="cpu")
            engine = build_engine(retriever, RRPORerank(reranker=policy, model=path, top_n=top_n), llm)
            with FeedbackStore(out / f"eval-{label}.db") as store, FeedbackCollector(store, query_engine=engine) as c:
                rows[label] = serve(engine, c, dev_q, rate=False)
            print(f"[{label}] dev thumbs-up {_mean(rows[label], 'thumbs_up'):.3f}  F1 {_mean(rows[label], 'f1'):.3f}  "
                  f"words {_mean(rows[label], 'words'):.1f}  latency {_mean(rows[label], 'latency_ms'):.0f} ms")
        return {"traffic": traffic_rows, "before": rows["before"], "after": rows["after"], "model": model,
                "metrics": out / "rrpo" / "metrics.jsonl"}  # fmt: skip
    finally:
        if own_server:
            server.stop()


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / max(1, len(rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--init", required=True, help="the reranker the pipeline starts with (an rrpo directory)")
    parser.add_argument("--out", default=None, help="folder for the store, the run and the model")
    parser.add_argument("--traffic", type=int, default=100, help="train-split questions served and rated")
    parser.add_argument("--dev", type=int, default=50, help="held-out dev-split questions, before and after")
    parser.add_argument("--steps", type=int, default=20, help="RRPO steps on the feedback")
    parser.add_argument("--explore", type=float, default=0.0, help="exploration epsilon while serving traffic")
    parser.add_argument("--quick", action="store_true", help="a tiny loop (6 + 4 questions, 2 steps)")
    args = parser.parse_args(argv)
    if args.quick:
        args.traffic, args.dev, args.steps = 6, 4, 2
    out = Path(args.out or tempfile.mkdtemp(prefix="rrpo-feedback-loop-"))
    result = run_loop(args.init, out, args.traffic, args.dev, args.steps, explore=args.explore)
    print(f"retrained reranker: {result['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
