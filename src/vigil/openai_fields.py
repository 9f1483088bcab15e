"""The OpenAI request fields the model server and its clients must agree on.

`MAX_EMBEDDING_INPUTS` and `MAX_INPUT_CHARS` bound one embeddings request;
the model server refuses more, and a batch job's chunks stay within them.

`constrained_by(body)` names the first field that constrains a generation's
output (a grammar, a JSON schema, tools), or None. The server refuses such a
request (its engine cannot honour it); the router never resumes one, since a
resend could change the output. Both read this one list, so a field added
here is refused and kept from resume together.
"""

from __future__ import annotations

from typing import Any

MAX_EMBEDDING_INPUTS = 256  # inputs per embeddings request
MAX_INPUT_CHARS = 32_768  # characters per input

CONSTRAINED = ("response_format", "tools", "tool_choice", "functions", "grammar", "guided_json",
               "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
UNCONSTRAINED_VALUES = (None, {"type": "text"}, "none")


def constrained_by(body: dict[str, Any]) -> str | None:
    for name in CONSTRAINED:
        if body.get(name) not in UNCONSTRAINED_VALUES:
            return name
    return None
