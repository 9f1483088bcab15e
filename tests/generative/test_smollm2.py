"""The real generative model, SmolLM2-135M-Instruct on llama.cpp (installed
by `scripts/install.sh --generative`; `scripts/test.sh --generative` runs
these). A stream cut at a sample of positions, greedy and seeded sampling,
continues to exactly the uninterrupted generation, through a real model
server and the router (tests/integration/test_stream_resume.py does every
position with the reference model)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.test_stream_resume import Front, read_stream, set_cut
from vigil.serve.generate import Sampling
from vigil.serve.llama import MODEL_ID, SmolLM2

QUESTION = [{"role": "user", "content": "What is a failover? Answer in two sentences."}]


@pytest.fixture(scope="module")
def model() -> SmolLM2:
    m = SmolLM2(threads=1)
    m.load()
    return m


def generate(m: SmolLM2, prompt: list[int], done: list[int], n: int, s: Sampling) -> list[int]:
    return finish(m, m.start(prompt, done), done, n, s)


def fed(m: SmolLM2, prompt: list[int], done: list[int], n: int, s: Sampling, size: int) -> list[int]:
    """As generate, with the delivered ids fed in batches of `size` after the prompt."""
    d = m.start(prompt)
    for i in range(0, len(done), size):
        d.feed(done[i:i + size])
    return finish(m, d, done, n, s)


def finish(m: SmolLM2, d, done: list[int], n: int, s: Sampling) -> list[int]:
    """`done` and what decoder `d` (which has taken them) generates after them, up to `n` in all."""
    out = list(done)
    try:
        for step in range(len(done), n):
            t = d.choose(s, step)
            if t in m.eos:
                break
            d.push(t)
            out.append(t)
    finally:
        d.close()
    return out


@pytest.mark.parametrize("sampling", [Sampling(0.0), Sampling(0.8, 0.95, 7)], ids=["greedy", "seeded"])
def test_continuation_from_token_ids_is_exact(model, sampling):
    prompt = model.chat(QUESTION)
    whole = generate(model, prompt, [], 40, sampling)
    assert len(whole) >= 15
    for cut in range(0, len(whole) + 1, 4):
        assert generate(model, prompt, whole[:cut], 40, sampling) == whole, f"cut at {cut}"


@pytest.mark.parametrize("words", [1, 257, 300], ids=["one-token", "n_batch-plus-one", "past-n_batch"])
def test_any_prompt_length_and_any_replay_batching_continue_exactly(model, words):
    """The class of the defect (a lone-token evaluation somewhere: a one-token prompt, a
    prompt or replay that llama.cpp would split leaving one token alone):
    batches of 1, 2, 3, 64 and the whole replay at once all continue exactly."""
    prompt = model.encode(" ".join(["node"] * words))
    assert len(prompt) == words
    sampling = Sampling(0.8, 0.95, 11)
    whole = generate(model, prompt, [], 80, sampling)
    assert len(whole) >= 70  # a cut past one 64-token replay batch
    for cut in (1, 2, 5, len(whole) // 2, len(whole) - 1):
        for size in (1, 2, 3, 64, 255):
            assert fed(model, prompt, whole[:cut], 80, sampling, size) == whole, f"cut {cut}, batches of {size}"


async def test_a_real_model_stream_cut_mid_way_resumes_exactly(model):
    front = Front()
    try:
        # one loaded model (its contexts) behind the three servers
        await front.start_with(lambda: model, slots=1)
        body = {"model": MODEL_ID, "messages": QUESTION, "max_tokens": 40, "temperature": 0, "stream": True}
        async with aiohttp.ClientSession() as http:
            whole = await read_stream(http, front.url + "/v1/chat/completions", body)
            for cut in (1, 9, 23):
                for name in front.servers:
                    await set_cut(front, name, cut)
                got = await read_stream(http, front.url + "/v1/chat/completions", body)
                assert (got["text"], got["ids"]) == (whole["text"], whole["ids"]), f"cut at {cut}"
                assert len(got["comments"]) == 1 and got["data"][-1] == "[DONE]"
    finally:
        await front.stop()
