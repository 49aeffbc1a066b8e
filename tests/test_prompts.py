"""The shared reader prompt and the context-word cost."""

import pytest

from rrpo import Candidate
from rrpo.prompts import build_prompt, context_words, format_passages, truncate_words


def test_truncate_words_cuts_and_collapses_whitespace():
    assert truncate_words("a  b\n c d", 3) == "a b c"
    assert truncate_words("a b", 10) == "a b"
    assert truncate_words("a b", 0) == ""
    with pytest.raises(ValueError, match="n must be >= 0"):
        truncate_words("a", -1)


def test_build_prompt_numbers_passages_in_the_given_order():
    passages = [
        Candidate(id="x", title="Paris", text="Paris is the capital of France."),
        Candidate(id="y", title="", text="Berlin is in Germany."),
    ]
    prompt = build_prompt("What is the capital of France?", passages)
    first = prompt.index("[1] Paris: Paris is the capital of France.")
    second = prompt.index("[2] Berlin is in Germany.")  # no title: no "Title:" prefix
    assert first < second
    assert prompt.rstrip().endswith("Question: What is the capital of France?\nAnswer:")
    assert "short answer" in prompt
    # The order is the reranker's: reversing the passages renumbers them.
    reversed_prompt = build_prompt("What is the capital of France?", passages[::-1])
    assert "[1] Berlin is in Germany." in reversed_prompt


def test_build_prompt_truncates_each_passage():
    long_text = " ".join(f"w{i}" for i in range(300))
    prompt = build_prompt("q?", [Candidate(id="a", text=long_text, title="T")], max_words=5)
    assert "[1] T: w0 w1 w2 w3 w4\n" in prompt
    assert "w5" not in prompt


def test_build_prompt_without_passages_is_closed_book_and_accepts_strings():
    closed = build_prompt("Who wrote Hamlet?", [])
    assert "[1]" not in closed and "Who wrote Hamlet?" in closed
    assert "[1] plain text passage" in build_prompt("q?", ["plain text passage"])
    with pytest.raises(TypeError, match="query must be a str"):
        build_prompt(None, [])


def test_context_words_counts_title_and_truncated_text():
    passages = [
        Candidate(id="a", title="Two Words", text=" ".join(["w"] * 200)),
        Candidate(id="b", title="", text="three short words"),
    ]
    assert context_words(passages, max_words=120) == 2 + 120 + 3
    assert context_words(passages, max_words=10) == 2 + 10 + 3
    assert context_words([]) == 0
    # The count is exactly the passage words the reader sees in the prompt.
    blocks = format_passages(passages, max_words=10)
    seen = sum(len(block.split(" ", 1)[1].replace(":", " ").split()) for block in blocks.split("\n\n"))
    assert seen == context_words(passages, max_words=10)
