"""QA data: the shared JSONL schema, Hugging Face data sets, and a BM25 first stage.

The shared schema (gzipped or plain JSON Lines, one question per line)::

    {"id": str, "question": str, "answers": [str, ...],
     "passages": [{"id": str, "title": str, "text": str, "gold": bool | null}, ...],
     ...extra fields}

Each line becomes an :class:`rrpo.Example`; extra fields land in ``Example.metadata``.
Data sets that ship a corpus and questions separately (SQuAD here) get their candidate
lists from :class:`BM25Index` through :func:`load_corpus_questions`.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .types import Candidate, Example, check_text

__all__ = [
    "BM25Index",
    "iter_jsonl",
    "load_corpus",
    "load_corpus_questions",
    "load_examples",
    "save_examples",
    "shared_data_dir",
    "example_from_record",
    "example_to_record",
]

# Keys of the shared schema; everything else in a line is kept as metadata.
_EXAMPLE_KEYS = {"id", "question", "answers", "passages"}
_PASSAGE_KEYS = {"id", "title", "text", "gold"}


# ---------------------------------------------------------------- files ---


def _open_text(path: Path, mode: str = "rt"):
    """Open plain or gzipped text; gzip is told by the ``.gz`` suffix."""
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a JSON Lines file (``.gz`` or plain).

    Raises FileNotFoundError naming the path, and ValueError naming the file and line
    number of a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}"
                )
            yield record


def shared_data_dir() -> Path:
    """The folder holding the shared QA data files.

    ``$RRPO_SHARED_DATA`` when set, else ``../shared/data`` beside the repository
    checkout (the layout the benchmarks use).
    """
    env = os.environ.get("RRPO_SHARED_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"RRPO_SHARED_DATA points to {path}, which is not a folder")
        return path
    repo_root = Path(__file__).resolve().parent.parent
    path = repo_root.parent / "shared" / "data"
    if path.is_dir():
        return path
    raise FileNotFoundError(
        f"shared data folder not found (looked for {path}); set RRPO_SHARED_DATA to the "
        "folder holding hotpotqa-*.jsonl.gz and squad-dev-*.jsonl.gz"
    )


# ------------------------------------------------------- shared schema ---


def _require(record: dict[str, Any], key: str, where: str) -> Any:
    if key not in record or record[key] is None:
        raise ValueError(f"{where}: missing required field {key!r}")
    return record[key]


def _as_answer_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and "text" in value:  # SQuAD-style {"text": [...], ...}
        return _as_answer_list(value["text"], where)
    if isinstance(value, (list, tuple)):
        return [str(a) for a in value]
    raise ValueError(f"{where}: 'answers' must be a string or a list of strings")


def example_from_record(record: dict[str, Any], where: str = "record") -> Example:
    """One shared-schema dict -> :class:`Example` (``where`` names it in errors)."""
    example_id = str(_require(record, "id", where))
    where = f"{where} (id {example_id!r})"
    question = _require(record, "question", where)
    if not isinstance(question, str):  # a list would become the string "['a', 'b']"
        raise ValueError(f"{where}: 'question' must be a string, got {type(question).__name__}")
    check_text(question, f"{where}: the question")
    passages = _require(record, "passages", where)
    if not isinstance(passages, list):
        raise ValueError(f"{where}: 'passages' must be a list")
    candidates, flags = [], []
    for i, passage in enumerate(passages):
        p_where = f"{where}, passage {i}"
        if not isinstance(passage, dict):
            raise ValueError(f"{p_where}: expected an object with 'id' and 'text'")
        try:
            candidates.append(
                Candidate(
                    id=str(passage.get("id", f"{example_id}#p{i}")),
                    text=str(_require(passage, "text", p_where)),
                    title=passage.get("title") or "",
                    metadata={k: v for k, v in passage.items() if k not in _PASSAGE_KEYS},
                )
            )
        except (TypeError, ValueError) as err:  # a title that is not text, a lone surrogate
            raise ValueError(f"{p_where}: {err}") from None
        flags.append(passage.get("gold"))
    # Gold flags count only when every passage carries one; null means "unknown".
    gold = [bool(f) for f in flags] if flags and all(f is not None for f in flags) else None
    return Example(
        id=example_id,
        query=str(question),
        candidates=candidates,
        answers=_as_answer_list(record.get("answers"), where),
        gold=gold,
        metadata={k: v for k, v in record.items() if k not in _EXAMPLE_KEYS},
    )


def example_to_record(example: Example) -> dict[str, Any]:
    """:class:`Example` -> shared-schema dict (the inverse of :func:`example_from_record`)."""
    passages = []
    for i, cand in enumerate(example.candidates):
        passage = {
            "id": cand.id,
            "title": cand.title,
            "text": cand.text,
            "gold": example.gold[i] if example.gold is not None else None,
        }
        passage.update({k: v for k, v in cand.metadata.items() if k not in _PASSAGE_KEYS})
        passages.append(passage)
    record = {
        "id": example.id,
        "question": example.query,
        "answers": list(example.answers),
        "passages": passages,
    }
    record.update({k: v for k, v in example.metadata.items() if k not in _EXAMPLE_KEYS})
    return record


def save_examples(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    """Write examples in the shared schema (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_text(path, "wt") as handle:
        for example in examples:
            handle.write(json.dumps(example_to_record(example), ensure_ascii=False) + "\n")
    return path


def _is_jsonl_path(source: str) -> bool:
    name = source.lower()
    return name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson"))


def load_examples(
    source: str | os.PathLike, split: str | None = None, limit: int | None = None
) -> list[Example]:
    """Load QA examples from a shared-schema JSONL file or a Hugging Face data set.

    ``source``: a ``.jsonl`` / ``.jsonl.gz`` path, or anything ``datasets`` can open
    (a hub id, a local data set folder, a saved ``save_to_disk`` folder). ``split``
    picks the data set split (default: ``train`` if present, else the first).
    ``limit`` keeps the first N examples.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    text = os.fspath(source)
    path = Path(text)
    if path.is_file() or _is_jsonl_path(text):
        examples = []
        for line_no, record in enumerate(iter_jsonl(path), start=1):
            if limit is not None and len(examples) >= limit:
                break
            examples.append(example_from_record(record, where=f"{path}, line {line_no}"))
        return examples
    return _load_hf_examples(text, split=split, limit=limit)


# ---------------------------------------------------- Hugging Face sets ---

_QUESTION_COLUMNS = ("question", "query")
_ANSWER_COLUMNS = ("answers", "answer")
_PASSAGE_COLUMNS = ("passages", "ctxs", "contexts", "context")
_GOLD_KEYS = ("gold", "is_gold", "has_answer", "is_supporting", "label")


def _first_column(row: dict[str, Any], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in row), None)


def _hf_passages(value: Any, example_id: str) -> tuple[list[Candidate], list[bool | None]]:
    """Normalise the passage column shapes seen in the wild to candidates + flags."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict) and "sentences" in value:  # HotpotQA {"title": [...], "sentences": [[...]]}
        titles = value.get("title") or [""] * len(value["sentences"])
        value = [
            {"title": t, "text": " ".join(s.strip() for s in sents)}
            for t, sents in zip(titles, value["sentences"])
        ]
    elif isinstance(value, dict):  # columnar {"text": [...], "title": [...], ...}
        keys = list(value)
        value = [dict(zip(keys, items)) for items in zip(*(value[k] for k in keys))]
    candidates, flags = [], []
    for i, item in enumerate(value or []):
        if isinstance(item, str):
            item = {"text": item}
        text = item.get("text") or item.get("passage_text") or item.get("content")
        if text is None:
            raise ValueError(f"example {example_id!r}, passage {i}: no 'text' field")
        candidates.append(
            Candidate(id=str(item.get("id", f"{example_id}#p{i}")), text=str(text), title=item.get("title") or "")
        )
        flag_key = _first_column(item, _GOLD_KEYS)
        flags.append(None if flag_key is None or item[flag_key] is None else bool(item[flag_key]))
    return candidates, flags


def _supporting_titles(facts: Any) -> set[str]:
    """Titles of HotpotQA supporting facts, columnar ({"title": [...]}) or as pairs."""
    if isinstance(facts, dict):
        return {str(t) for t in facts.get("title") or []}
    if isinstance(facts, list):
        return {str(f[0]) for f in facts if isinstance(f, (list, tuple)) and f}
    return set()


def _example_from_hf_row(row: dict[str, Any], index: int, source: str) -> Example:
    q_col = _first_column(row, _QUESTION_COLUMNS)
    if q_col is None:
        raise ValueError(f"{source}: rows need a 'question' or 'query' column; got {sorted(row)}")
    p_col = _first_column(row, _PASSAGE_COLUMNS)
    if p_col is None:
        raise ValueError(
            f"{source}: rows need a passage column (one of {', '.join(_PASSAGE_COLUMNS)}); "
            f"got {sorted(row)}"
        )
    example_id = str(row.get("id", row.get("_id", index)))
    candidates, flags = _hf_passages(row[p_col], example_id)
    supporting = _supporting_titles(row.get("supporting_facts"))
    if supporting and all(f is None for f in flags):  # HotpotQA: gold = a supporting title
        flags = [c.title in supporting for c in candidates]
    a_col = _first_column(row, _ANSWER_COLUMNS)
    used = {q_col, p_col, a_col, "id"}
    return Example(
        id=example_id,
        query=str(row[q_col]),
        candidates=candidates,
        answers=_as_answer_list(row[a_col], f"{source}, row {index}") if a_col else [],
        gold=[bool(f) for f in flags] if flags and all(f is not None for f in flags) else None,
        metadata={k: v for k, v in row.items() if k not in used},
    )


def _load_hf_examples(source: str, split: str | None, limit: int | None) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{source!r} is not a .jsonl file, so it is read as a Hugging Face data set, which "
            "needs the 'datasets' package: pip install rrpo[eval]"
        ) from None
    folder = Path(source)
    saved_markers = ("state.json", "dataset_dict.json")  # written by save_to_disk
    if folder.is_dir() and any((folder / name).exists() for name in saved_markers):
        loaded = datasets.load_from_disk(source)
    else:
        loaded = datasets.load_dataset(source, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in loaded else next(iter(loaded))
        if split not in loaded:
            raise ValueError(f"{source}: no split {split!r}; has {', '.join(loaded)}")
        loaded = loaded[split]
    if limit is not None:
        loaded = loaded.select(range(min(limit, len(loaded))))
    return [_example_from_hf_row(row, i, source) for i, row in enumerate(loaded)]


# ------------------------------------------------------ BM25 first stage ---


def _bm25s():
    try:
        import bm25s
    except ImportError:
        raise ImportError("the BM25 first stage needs bm25s: pip install rrpo[eval]") from None
    return bm25s


class BM25Index:
    """A BM25 index over a corpus of candidates (``bm25s``; English stopwords removed).

    ``search`` returns copies of the corpus candidates with ``Candidate.score`` set to
    the BM25 score, best first.
    """

    def __init__(self, corpus: Sequence[Candidate], show_progress: bool = False) -> None:
        if not corpus:
            raise ValueError("BM25Index needs a non-empty corpus")
        bm25s = _bm25s()
        self.corpus = list(corpus)
        self._show_progress = show_progress
        # Title words help: SQuAD questions often name the article.
        texts = [f"{c.title} {c.text}".strip() for c in self.corpus]
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=show_progress)
        self._retriever = bm25s.BM25()
        self._retriever.index(tokens, show_progress=show_progress)

    def __len__(self) -> int:
        return len(self.corpus)

    def search(self, queries: Sequence[str], k: int = 20) -> list[list[Candidate]]:
        """Top ``k`` candidates for each query (fewer if the corpus is smaller)."""
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query in a list")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return []
        bm25s = _bm25s()
        k = min(k, len(self.corpus))
        # Lists of strings (not ids) so query words map onto the corpus vocabulary;
        # words the corpus never saw are dropped by bm25s.
        query_tokens = bm25s.tokenize(
            list(queries), stopwords="en", return_ids=False, show_progress=False
        )
        indices, scores = self._retriever.retrieve(
            query_tokens, k=k, show_progress=self._show_progress
        )
        return [
            [self._scored_copy(int(i), float(s)) for i, s in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(indices, scores)
        ]

    def _scored_copy(self, index: int, score: float) -> Candidate:
        cand = self.corpus[index]
        return Candidate(
            id=cand.id, text=cand.text, title=cand.title, metadata=dict(cand.metadata), score=score
        )


def load_corpus(path: str | os.PathLike) -> list[Candidate]:
    """Corpus file (one ``{"id", "text", "title", ...}`` per line) -> candidates."""
    corpus = []
    for line_no, row in enumerate(iter_jsonl(path), start=1):
        where = f"{path}, line {line_no}"
        corpus.append(
            Candidate(
                id=str(_require(row, "id", where)),
                text=str(_require(row, "text", where)),
                title=row.get("title") or "",
                metadata={k: v for k, v in row.items() if k not in _PASSAGE_KEYS},
            )
        )
    return corpus


def load_corpus_questions(
    corpus_path: str | os.PathLike,
    questions_path: str | os.PathLike,
    k: int = 20,
    limit: int | None = None,
    index: BM25Index | None = None,
) -> list[Example]:
    """Questions whose candidates are the BM25 top ``k`` of a separate corpus.

    Question lines need ``id`` and ``question``; ``answers`` and ``gold_passage_id`` are
    used when present. Gold flags mark the retrieved passage whose id is the question's
    ``gold_passage_id`` (all False when BM25 missed it; ``gold`` is None for questions
    that name no gold passage). ``metadata["gold_retrieved"]`` says whether it was found.
    Pass ``index`` to reuse one BM25 index for several question files.
    """
    questions = []
    for line_no, row in enumerate(iter_jsonl(questions_path), start=1):
        if limit is not None and len(questions) >= limit:
            break
        where = f"{questions_path}, line {line_no}"
        _require(row, "id", where)
        _require(row, "question", where)
        questions.append(row)
    if index is None:
        index = BM25Index(load_corpus(corpus_path))
    results = index.search([str(q["question"]) for q in questions], k=k)
    return [_example_from_question(q, cands) for q, cands in zip(questions, results)]


def _example_from_question(row: dict[str, Any], candidates: list[Candidate]) -> Example:
    gold_id = row.get("gold_passage_id")
    metadata = {k: v for k, v in row.items() if k not in {"id", "question", "answers"}}
    gold = None
    if gold_id is not None:
        gold = [c.id == str(gold_id) for c in candidates]
        metadata["gold_retrieved"] = any(gold)
    return Example(
        id=str(row["id"]),
        query=str(row["question"]),
        candidates=candidates,
        answers=_as_answer_list(row.get("answers"), f"question {row['id']!r}"),
        gold=gold,
        metadata=metadata,
    )


def split_gold(example: Example) -> tuple[list[Candidate], list[Candidate]]:
    """(gold passages, the other passages) of an example that has gold flags."""
    if example.gold is None:
        raise ValueError(f"example {example.id!r} has no gold flags")
    gold = [c for c, g in zip(example.candidates, example.gold) if g]
    others = [c for c, g in zip(example.candidates, example.gold) if not g]
    return gold, others


def gold_pair_examples(source: str | os.PathLike, n: int) -> list[Example]:
    """The first ``n`` examples with an answer, exactly 2 gold passages and at least 2
    others: the HotpotQA case "gold pair vs two distractors" that tells whether a
    reader's likelihood can judge a context."""
    out = []
    for example in load_examples(source):
        if example.gold is None or not example.answers:
            continue
        gold, others = split_gold(example)
        if len(gold) == 2 and len(others) >= 2:
            out.append(example)
            if len(out) == n:
                break
    return out
