"""Generation, token by token, on any causal language model behind one small
port, so a stream cut at any token can be continued exactly on another node.

The port (`LanguageModel`): `encode(text)` and `chat(messages)` give prompt
token ids, `piece(id)` a token's bytes (a character may span tokens), `eos`
the ids that end a generation, and `start(prompt, generated)` a `Decoder`
that holds the context (its KV cache, in a real engine) and
`choose(sampling, step)`s the next token, then takes it with `push(id)`.

Exact continuation rests on two rules every engine here keeps:
- sampling draws from an RNG keyed by (seed, step), `step` counting the
  generated tokens from the first, so token k is drawn the same way whether
  the decoder produced tokens 0..k-1 itself or was started on them;
- a continuation is started on the prompt's ids plus the generated ids, never
  on re-tokenised text (which may not give the same ids back), and the
  engine feeds the generated ids as it did when it made them (llama.cpp: one
  at a time, not in the prompt's batch, or the logits differ).

`ReferenceLM` is a small deterministic model in pure Python with the same
API (byte fallback, multi-byte characters split across tokens, "\\n" and
"\\n\\n" both in the vocabulary), for tests that cut a stream at every token.
"""

from __future__ import annotations

import codecs
import hashlib
import random
import struct
import time
from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; `seed` makes sampling at temperature > 0 repeatable."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def rng(self, step: int) -> random.Random:
        """The RNG for the `step`-th generated token (0-based): a pure function of (seed, step)."""
        return random.Random(f"{self.seed}:{step}")


def pick(scores: Sequence[float], sampling: Sampling, step: int) -> int:
    """The index chosen from `scores` (logits): argmax when greedy, else a draw
    from softmax(scores / temperature) within the top_p nucleus."""
    if sampling.temperature <= 0:
        return max(range(len(scores)), key=scores.__getitem__)
    top = max(scores)
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    weights = [pow(2.718281828459045, (scores[i] - top) / sampling.temperature) for i in order]
    total, kept, acc = sum(weights), [], 0.0
    for i, w in zip(order, weights):
        kept.append((i, w))
        acc += w
        if acc >= sampling.top_p * total:
            break
    r = sampling.rng(step).random() * sum(w for _, w in kept)
    for i, w in kept:
        r -= w
        if r <= 0:
            return i
    return kept[-1][0]


class Decoder(Protocol):
    def choose(self, sampling: Sampling, step: int) -> int: ...

    def push(self, token: int) -> None: ...

    def feed(self, tokens: list[int]) -> None:
        """Take `tokens` (the rest of a prompt, a continuation's replay) in one go: after
        it the decoder chooses exactly as after push(t) for each t."""

    def close(self) -> None: ...  # the context it holds is free again


class LanguageModel(Protocol):
    model_id: str
    eos: frozenset[int]
    context: int  # the most tokens a prompt plus its generation may hold
    vocab_size: int

    def load(self) -> None: ...

    def encode(self, text: str) -> list[int]: ...

    def chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def piece(self, token: int) -> bytes: ...

    def start(self, prompt: list[int], generated: Sequence[int] = ()) -> Decoder: ...


class TextStream:
    """Token ids in, text out: a character split across tokens comes out
    with the token that completes it (a token may yield ""). `skip(ids)`
    feeds ids whose text the client already has (a continuation)."""

    def __init__(self, model: LanguageModel):
        self.model = model
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def text(self, token: int) -> str:
        return self._utf8.decode(self.model.piece(token))

    def skip(self, ids: list[int]) -> None:
        for t in ids:
            self.text(t)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# -- the reference engine --------------------------------------------------------------
_WORDS = ["the", " the", " node", " leader", " lease", " fence", " token", " failover", " cluster",
          " is", " was", " holds", " moves", " to", " a", " new", " healthy", " GPU", " model",
          ",", ".", "\n", "\n\n", " café", " 温度", " ✓", " heartbeat", " router", " stream",
          " resumes", " on", " another", " etcd", " quorum", " caf"]  # " caf": "é" follows as two bytes
BYTES = 256  # ids 0..255: one byte each (the byte fallback)
EOS = BYTES + len(_WORDS)


class ReferenceLM:
    """A deterministic toy language model: the next token's scores are a hash
    of the last three tokens, so a continuation must replay the context
    exactly. `token_delay` seconds per token make streams long enough to cut."""

    model_id = "vigil-reference-lm"
    context = 4096

    def __init__(self, token_delay: float = 0.0, ends: bool = True):
        """`ends=False`: it never chooses end-of-sequence (a generation runs to max_tokens)."""
        self.token_delay, self.ends = token_delay, ends
        self.vocab: list[bytes] = [bytes([b]) for b in range(BYTES)] + [w.encode() for w in _WORDS] + [b""]
        self.eos = frozenset({EOS})
        self.vocab_size = len(self.vocab)
        self.cafe = self.vocab.index(" café".encode())
        self._by_text = sorted(((v, i) for i, v in enumerate(self.vocab) if i >= BYTES and v),
                               key=lambda p: -len(p[0]))

    def load(self) -> None:
        pass

    def encode(self, text: str) -> list[int]:
        """Greedy longest match over the words, bytes for the rest."""
        data, out, pos = text.encode(), [], 0
        while pos < len(data):
            for v, i in self._by_text:
                if data.startswith(v, pos):
                    out.append(i)
                    pos += len(v)
                    break
            else:
                out.append(data[pos])
                pos += 1
        return out

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return self.encode(text)

    def piece(self, token: int) -> bytes:
        return self.vocab[token] if 0 <= token < len(self.vocab) else b""

    def start(self, prompt: list[int], generated: Sequence[int] = ()) -> "ReferenceDecoder":
        return ReferenceDecoder(self, list(prompt) + list(generated))


class ReferenceDecoder:
    def __init__(self, model: ReferenceLM, ids: list[int]):
        self.model, self.ids = model, ids

    def scores(self) -> list[float]:
        h = hashlib.blake2b(struct.pack(f"<{min(3, len(self.ids))}I", *self.ids[-3:]), digest_size=64).digest()
        n = len(self.model.vocab)
        # words score high, bytes low except the continuation bytes of a split character
        scores = [((h[i % 64] ^ (i * 37 & 0xFF)) / 32.0) - (4.0 if i < BYTES else 0.0) for i in range(n)]
        scores[EOS] = h[0] / 64.0 if len(self.ids) > 24 and self.model.ends else -99.0  # an end, now and then
        scores[self.model.cafe] = -99.0  # generated only split: " caf" + "\xc3" + "\xa9"
        if self.ids and self.model.piece(self.ids[-1]) == b" caf":
            scores[0xC3] = 99.0  # " caf" + "\xc3" + "\xa9": "é" across two tokens
        elif self.ids and self.ids[-1] == 0xC3:
            scores[0xA9] = 99.0
        return scores

    def choose(self, sampling: Sampling, step: int) -> int:
        if self.model.token_delay:
            time.sleep(self.model.token_delay)  # the engine's work for one token (a worker thread)
        return pick(self.scores(), sampling, step)

    def push(self, token: int) -> None:
        self.ids.append(token)

    def feed(self, tokens: list[int]) -> None:
        self.ids += tokens

    def close(self) -> None:
        pass


def generation(model: LanguageModel, prompt: list[int], n: int, sampling: Sampling) -> tuple[str, list[int]]:
    """The uninterrupted generation of up to `n` tokens after `prompt`: (text, token ids),
    as a model server streams it (what a resumed stream must equal)."""
    decoder, text, ids, out = model.start(prompt), TextStream(model), [], ""
    try:
        for step in range(n):
            token = decoder.choose(sampling, step)
            if token in model.eos:
                break
            decoder.push(token)
            ids.append(token)
            out += text.text(token)
    finally:
        decoder.close()
    return out + text.flush(), ids

