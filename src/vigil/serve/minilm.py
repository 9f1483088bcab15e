"""all-MiniLM-L6-v2 in plain torch: its BERT encoder (6 layers, 12 heads,
384 wide), mean pooling over the real tokens and L2 normalisation, read from
the model's own files (model.safetensors, tokenizer.json,
sentence_bert_config.json).

Why not sentence-transformers: importing it (with transformers and sklearn)
costs about 3.5 s of CPU before the model is read, on every start of every
model server. A lab of three servers, or a node whose killed server
restarts beside a failover, paid that on 2 cores. This module imports torch,
tokenizers and safetensors only and computes the same embeddings: the
conformance test (tests/unit/test_minilm.py) compares it with
sentence-transformers on the same texts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

BATCH = 32  # sentence-transformers' default batch size
HEADS = 12


class MiniLMEncoder:
    """Texts in, unit vectors out. Not thread-safe (one model server thread calls it)."""

    def __init__(self, path: Path):
        """Read the model under `path`. A broken model directory raises whatever
        the file, JSON, tokenizers or safetensors readers raise: the caller
        (vigil.serve.model) names it."""
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.torch = torch
        self.max_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_truncation()  # the model's input is cut here (`_cut`): the count is of the whole
        self.tokenizer.no_padding()
        self.w: dict[str, Any] = load_file(str(path / "model.safetensors"))
        self.layers = sum(1 for k in self.w if k.endswith(".attention.self.query.weight"))

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """One unit vector per text, in order, and how many tokens the texts are
        untruncated (with [CLS] and [SEP] each), from one tokenization. The texts
        are batched longest first (as sentence-transformers does): a batch is
        padded to its longest text, and attention costs the square of that width."""
        torch = self.torch
        whole = [e.ids for e in self.tokenizer.encode_batch(texts)]
        cut = [self._cut(ids) for ids in whole]
        order = sorted(range(len(texts)), key=lambda i: -len(cut[i]))
        out: list[list[float]] = [[] for _ in texts]
        with torch.inference_mode():
            for start in range(0, len(order), BATCH):
                batch = order[start:start + BATCH]
                width = len(cut[batch[0]])
                ids = torch.tensor([cut[i] + [0] * (width - len(cut[i])) for i in batch])
                mask = torch.tensor([[1] * len(cut[i]) + [0] * (width - len(cut[i])) for i in batch])
                for i, vector in zip(batch, self._pooled(ids, mask).tolist()):
                    out[i] = vector
        return out, sum(len(ids) for ids in whole)

    def _cut(self, ids: list[int]) -> list[int]:
        """The model's input: the first max_length - 1 tokens and the closing [SEP]
        (the tokenizer's own truncation of one sequence)."""
        return ids if len(ids) <= self.max_length else ids[:self.max_length - 1] + ids[-1:]

    def _pooled(self, ids: Any, mask: Any) -> Any:
        torch, w = self.torch, self.w
        f = torch.nn.functional
        width = ids.shape[1]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # padding is never attended
        for n in range(self.layers):
            p = f"encoder.layer.{n}."
            x = self._norm(x + self._linear(self._attention(x, bias, p), p + "attention.output.dense"),
                           p + "attention.output.LayerNorm")
            hidden = f.gelu(self._linear(x, p + "intermediate.dense"))
            x = self._norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        m = mask[:, :, None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return f.normalize(pooled, p=2, dim=1)

    def _attention(self, x: Any, bias: Any, p: str) -> Any:
        batch, width, size = x.shape
        d = size // HEADS

        def heads(name: str) -> Any:
            return self._linear(x, p + f"attention.self.{name}").view(batch, width, HEADS, d).transpose(1, 2)
        q, k, v = heads("query"), heads("key"), heads("value")
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, width, size)

    def _linear(self, x: Any, name: str) -> Any:
        return self.torch.nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def _norm(self, x: Any, name: str) -> Any:
        return self.torch.nn.functional.layer_norm(x, x.shape[-1:], self.w[name + ".weight"],
                                                   self.w[name + ".bias"], 1e-12)
