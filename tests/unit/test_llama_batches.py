"""LlamaDecoder's batching (vigil.serve.llama) on a stand-in for llama-cpp-python's
Llama that keeps its bookkeeping (n_tokens, input_ids; eval drops the cache from
n_tokens on) and records every batch: the exactness of a continuation rests on no
token being evaluated alone, on any path, but the first token of a one-token
prompt, which the next batch rewrites (the real model's bit-for-bit check:
tests/generative/test_smollm2.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vigil.errors import VigilError
from vigil.serve.llama import LlamaDecoder


class FakeLlama:
    def __init__(self, n_batch: int = 8, n_ubatch: int = 512, fail_at: int | None = None):
        self.n_batch, self.context_params = n_batch, SimpleNamespace(n_ubatch=min(n_batch, n_ubatch))
        self.n_tokens, self.input_ids = 0, np.zeros(4096, dtype=np.intc)
        self.batches: list[list[int]] = []
        self.cache: list[tuple[int, int]] = []  # (token, size of the batch that last wrote it)
        self.fail_at = fail_at

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens: list[int]) -> None:
        assert len(tokens) <= self.n_batch, "llama-cpp-python would split it"
        if self.fail_at is not None and self.n_tokens + len(tokens) > self.fail_at:
            raise RuntimeError("llama_decode returned 1")
        del self.cache[self.n_tokens:]
        self.batches.append(list(tokens))
        self.cache += [(t, len(tokens)) for t in tokens]
        self.input_ids[self.n_tokens:self.n_tokens + len(tokens)] = tokens
        self.n_tokens += len(tokens)


def run(prompt: list[int], pushed: list[int], fed: list[list[int]], n_batch: int = 8) -> FakeLlama:
    llm = FakeLlama(n_batch)
    d = LlamaDecoder(llm, prompt, [])
    for part in fed:
        d.feed(part)
    for t in pushed:
        d.push(t)
    return llm


@settings(max_examples=300, deadline=None)
@given(prompt=st.lists(st.integers(0, 99), min_size=1, max_size=40),
       generated=st.lists(st.integers(0, 99), max_size=40), cut=st.integers(0, 40),
       sizes=st.lists(st.integers(1, 20), min_size=1, max_size=5), n_batch=st.integers(2, 16))
def test_no_token_is_evaluated_alone_and_every_path_builds_the_same_cache(prompt, generated, cut, sizes, n_batch):
    cut = min(cut, len(generated))
    done, rest = generated[:cut], generated[cut:]
    fed, i = [], 0
    while i < len(done):  # the delivered ids in batches of the drawn sizes
        fed.append(done[i:i + sizes[len(fed) % len(sizes)]])
        i += len(fed[-1])
    original = run(prompt, generated, [], n_batch)
    continued = run(prompt, rest, fed, n_batch)
    whole = prompt + generated
    for llm in (original, continued):
        assert [t for t, _ in llm.cache] == whole
        assert llm.n_tokens == len(whole)
        # alone only the first token of a one-token prompt (its logits choose the first
        # generated token, the same on every path), and the next batch rewrites it
        lone = [i for i, b in enumerate(llm.batches) if len(b) == 1]
        assert lone in ([], [0]) and (not lone or llm.batches[0] == prompt[:1]), llm.batches
        # every cache entry last written by a batch of two or more (but a one-token sequence's)
        assert len(whole) == 1 or all(size >= 2 for _, size in llm.cache)


def test_a_failed_evaluation_leaves_the_decoder_refusing_to_go_on():
    llm = FakeLlama(n_batch=8, fail_at=12)
    d = LlamaDecoder(llm, list(range(10)), [])
    d.push(10)
    with pytest.raises(RuntimeError):
        d.feed([11, 12, 13])
    with pytest.raises(VigilError, match="failed"):
        d.push(14)
    with pytest.raises(VigilError, match="failed"):
        d.choose(None, 0)  # type: ignore[arg-type]
