"""The OpenAI request fields the model server and the router must agree on.

`constrained_by(body)` names the first field that constrains a generation's
output (a grammar, a JSON schema, tools), or None. The server refuses such a
request (its engine cannot honour it); the router never resumes one, since a
resend could change the output. Both read this one list, so a field added
here is refused and kept from resume together.
"""

from __future__ import annotations

from typing import Any

CONSTRAINED = ("response_format", "tools", "tool_choice", "functions", "grammar", "guided_json",
               "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
UNCONSTRAINED_VALUES = (None, {"type": "text"}, "none")


def constrained_by(body: dict[str, Any]) -> str | None:
    for name in CONSTRAINED:
        if body.get(name) not in UNCONSTRAINED_VALUES:
            return name
    return None
