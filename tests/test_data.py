"""rrpo.data: the shared JSONL schema, Hugging Face data sets, and the BM25 first stage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rrpo import Candidate, Example
from rrpo.data import (
    BM25Index,
    iter_jsonl,
    load_corpus,
    load_corpus_questions,
    load_examples,
    save_examples,
    shared_data_dir,
)

RECORD = {
    "id": "q1",
    "question": "Who wrote Hamlet?",
    "answers": ["William Shakespeare", "Shakespeare"],
    "passages": [
        {"id": "p0", "title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare.", "gold": True},
        {"id": "p1", "title": "Denmark", "text": "Denmark is a Nordic country.", "gold": False},
    ],
    "type": "bridge",
    "level": "hard",
}


def _write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_load_examples_reads_the_shared_schema(tmp_path, gz):
    path = _write_jsonl(tmp_path / ("d.jsonl.gz" if gz else "d.jsonl"), [RECORD], gz=gz)
    [ex] = load_examples(path)
    assert ex.id == "q1" and ex.query == "Who wrote Hamlet?"
    assert ex.answers == ["William Shakespeare", "Shakespeare"]
    assert [c.id for c in ex.candidates] == ["p0", "p1"]
    assert ex.candidates[0].title == "Hamlet"
    assert ex.gold == [True, False]
    assert ex.metadata == {"type": "bridge", "level": "hard"}


def test_null_gold_flags_mean_no_gold(tmp_path):
    record = json.loads(json.dumps(RECORD))
    for p in record["passages"]:
        p["gold"] = None
    [ex] = load_examples(_write_jsonl(tmp_path / "d.jsonl", [record]))
    assert ex.gold is None


def test_limit_and_blank_lines(tmp_path):
    records = [dict(RECORD, id=f"q{i}") for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    assert [e.id for e in load_examples(path, limit=3)] == ["q0", "q1", "q2"]
    assert len(load_examples(path)) == 5
    with pytest.raises(ValueError, match="limit"):
        load_examples(path, limit=-1)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_examples(path)


def test_missing_required_field_is_named(tmp_path):
    record = {k: v for k, v in RECORD.items() if k != "question"}
    with pytest.raises(ValueError, match=r"line 1 \(id 'q1'\): missing required field 'question'"):
        load_examples(_write_jsonl(tmp_path / "d.jsonl", [record]))
    record = json.loads(json.dumps(RECORD))
    del record["passages"][1]["text"]
    with pytest.raises(ValueError, match=r"passage 1: missing required field 'text'"):
        load_examples(_write_jsonl(tmp_path / "e.jsonl", [record]))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_jsonl(tmp_path / "nope.jsonl.gz"))


def test_save_examples_round_trips(tmp_path):
    examples = [
        Example(
            id="a",
            query="q?",
            candidates=[Candidate("c0", "text zero", "T0"), Candidate("c1", "text one")],
            answers=["x"],
            gold=[False, True],
            metadata={"source": "demo"},
        ),
        Example(id="b", query="r?", candidates=[Candidate("d0", "t")], answers=[], gold=None),
    ]
    path = save_examples(examples, tmp_path / "sub" / "out.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert first["question"] == "q?" and first["passages"][1]["gold"] is True
    assert first["source"] == "demo"
    loaded = load_examples(path)
    assert [(e.id, e.query, e.answers, e.gold, e.metadata) for e in loaded] == [
        ("a", "q?", ["x"], [False, True], {"source": "demo"}),
        ("b", "r?", [], None, {}),
    ]
    assert [(c.id, c.text, c.title) for c in loaded[0].candidates] == [
        ("c0", "text zero", "T0"),
        ("c1", "text one", ""),
    ]


def test_hugging_face_dataset_folder_with_common_column_names(tmp_path):
    import datasets

    rows = {
        "query": ["Who wrote Hamlet?", "Capital of France?"],
        "answer": ["Shakespeare", "Paris"],
        "ctxs": [
            [{"title": "Hamlet", "text": "By Shakespeare.", "has_answer": True},
             {"title": "Denmark", "text": "A country.", "has_answer": False}],
            [{"title": "France", "text": "Paris is its capital.", "has_answer": True},
             {"title": "Spain", "text": "Madrid.", "has_answer": False}],
        ],
    }
    folder = tmp_path / "hf"
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(folder))
    examples = load_examples(folder, split="test", limit=1)
    assert len(examples) == 1
    ex = examples[0]
    assert ex.query == "Who wrote Hamlet?" and ex.answers == ["Shakespeare"]
    assert [c.title for c in ex.candidates] == ["Hamlet", "Denmark"]
    assert ex.gold == [True, False]
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_examples(folder, split="dev")


def test_hugging_face_hotpotqa_layout_gets_gold_from_supporting_facts(tmp_path):
    import datasets

    rows = {
        "id": ["h1"],
        "question": ["Which came first?"],
        "answer": ["A"],
        "context": [{"title": ["A", "B", "C"], "sentences": [["A was ", "first."], ["B."], ["C."]]}],
        "supporting_facts": [{"title": ["A", "C"], "sent_id": [0, 0]}],
    }
    folder = tmp_path / "hotpot"
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    [ex] = load_examples(folder)
    assert [c.title for c in ex.candidates] == ["A", "B", "C"]
    assert ex.candidates[0].text == "A was first."
    assert ex.gold == [True, False, True]
    assert ex.answers == ["A"] and "supporting_facts" in ex.metadata


def test_shared_data_dir_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RRPO_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("RRPO_SHARED_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RRPO_SHARED_DATA"):
        shared_data_dir()


# ---- the real shared data ----


@pytest.fixture(scope="module")
def data_dir() -> Path:
    import os

    os.environ.pop("RRPO_SHARED_DATA", None)
    return shared_data_dir()


def test_real_hotpotqa_file_has_two_gold_passages(data_dir):
    examples = load_examples(data_dir / "hotpotqa-distractor.dev.jsonl.gz", limit=20)
    assert len(examples) == 20
    for ex in examples:
        assert ex.gold is not None and sum(ex.gold) == 2
        assert ex.answers and ex.metadata["type"] in {"bridge", "comparison"}


@pytest.fixture(scope="module")
def squad_index(data_dir) -> BM25Index:
    return BM25Index(load_corpus(data_dir / "squad-dev-corpus.jsonl.gz"))


def test_bm25_finds_the_paragraph_of_an_exact_copy_question(squad_index):
    target = squad_index.corpus[500]
    sentence = target.text.split(". ")[0]
    [results] = squad_index.search([sentence], k=5)
    assert results[0].id == target.id
    scores = [c.score for c in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # the corpus candidates themselves are not modified
    assert squad_index.corpus[500].score is None


def test_bm25_search_validates_and_caps_k(squad_index):
    small = BM25Index([Candidate("a", "red apples"), Candidate("b", "green pears")])
    [res] = small.search(["apples"], k=10)
    assert [c.id for c in res] == ["a", "b"]
    with pytest.raises(TypeError, match="list of queries"):
        small.search("apples")
    with pytest.raises(ValueError, match="k must be"):
        small.search(["apples"], k=0)
    with pytest.raises(ValueError, match="non-empty corpus"):
        BM25Index([])


def test_squad_corpus_questions_get_bm25_candidates_and_gold_flags(data_dir, squad_index):
    examples = load_corpus_questions(
        data_dir / "squad-dev-corpus.jsonl.gz",
        data_dir / "squad-dev-questions.dev.jsonl.gz",
        k=20,
        limit=60,
        index=squad_index,
    )
    assert len(examples) == 60
    for ex in examples:
        assert len(ex.candidates) == 20 and ex.gold is not None
        assert sum(ex.gold) == int(ex.metadata["gold_retrieved"])
        if ex.metadata["gold_retrieved"]:
            assert ex.candidates[ex.gold.index(True)].id == ex.metadata["gold_passage_id"]
    found = sum(ex.metadata["gold_retrieved"] for ex in examples) / len(examples)
    assert found >= 0.7  # BM25 top-20 finds most SQuAD gold paragraphs
