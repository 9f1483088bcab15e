"""The router's side of a resumed stream (vigil.router.resume.SseSplice), cut
at every byte offset of a realistic stream, not only between events: the
client sees well-formed events only, and their token ids are the
uninterrupted run's exactly (none glued, lost or twice). In-process: the
continuation a model server would send for the ids delivered is built here
as vigil.serve.completions builds it; through the real router and model
servers: tests/integration/test_stream_resume.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from vigil.router.resume import MAX_EVENT, SseSplice

TOKENS = [101, 7, 2048, 33, 0, 65535, 12, 9]
TEXT = ["The", " node", " é", "\n\n", "", " fails", " \"over\"", "."]  # JSON escapes, blank lines in text
ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


def event(obj: object, nl: str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}{nl}{nl}".encode()


def stream(chat: bool, start: int, nl: str) -> bytes:
    """What a model server sends for TOKENS[start:] (vigil.serve.completions), with the
    comment a queued stream hears first, and the chat role chunk from token 0 (a
    continuation from no token cannot know whether its predecessor's went out)."""
    def chunk(i: int | None, finish: str | None = None) -> dict:
        text, ids = ("", []) if i is None else (TEXT[i], [TOKENS[i]])
        choice = {"index": 0, "finish_reason": finish, "token_ids": ids,
                  **({"delta": {"content": text}} if chat else {"text": text})}
        return {"id": "cmpl-1", "created": 7, "choices": [choice]}
    out = f": queued: every decoding slot is busy{nl}{nl}".encode()
    if chat and start == 0:
        role = chunk(None)
        role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        out += event(role, nl)
    for i in range(start, len(TOKENS)):
        out += event(chunk(i), nl)
    return out + event(chunk(None, "stop"), nl) + event("[DONE]", nl)


def client_view(raw: bytes) -> tuple[list[int], int, int]:
    """The token ids, [DONE]s and role chunks in what the client got; fails on an
    event that is not well-formed (a comment, JSON data or [DONE])."""
    assert raw.endswith(b"\n\n") or not raw, raw[-80:]
    ids, dones, roles = [], 0, 0
    for ev in raw.decode().split("\n\n")[:-1]:
        lines = ev.split("\n")
        assert lines and all(ln.startswith(("data: ", ":")) for ln in lines), repr(ev)
        data = "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))
        if data == "[DONE]":
            dones += 1
        elif data:
            choices = json.loads(data)["choices"]
            ids += [t for c in choices for t in c["token_ids"]]
            roles += sum("role" in c.get("delta", {}) for c in choices)
    return ids, dones, roles


def resumed_run(first: bytes, chat: bool, nl: str, pieces: list[int] = ()) -> bytes:
    """What the client gets when the first node sends `first` (in reads split at
    `pieces`) and then fails, and another node continues (as ResumingStream does)."""
    s, out, at = SseSplice(), [], 0
    for cut in [*sorted(pieces), len(first)]:
        out += s.feed(first[at:cut])
        at = cut
    ids, _, _ = client_view(b"".join(out))
    assert s.delivered == ids, "delivered: the ids of exactly the events written"
    if s.done:
        return b"".join(out)
    s.cut()
    if s.finished:  # cut after its last token: the router ends the stream itself
        return b"".join(out) + b"data: [DONE]\n\n"
    out.append(b": vigil resumed n1->n2 at token %d\n\n" % len(s.delivered))
    out += s.feed(stream(chat, len(s.delivered), nl))
    assert s.done
    return b"".join(out)


@pytest.mark.parametrize("nl", ENDINGS.values(), ids=ENDINGS.keys())
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_a_stream_cut_at_every_byte_resumes_with_whole_events_and_exact_ids(chat, nl):
    whole = stream(chat, 0, nl)
    for cut in range(len(whole) + 1):
        ids, dones, roles = client_view(resumed_run(whole[:cut], chat, nl))
        assert ids == TOKENS and dones == 1, f"cut at byte {cut}: {whole[max(0, cut - 40):cut]!r}"
        assert roles == chat, f"cut at byte {cut}: the role chunk once"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_reads_split_anywhere_change_nothing(data):
    """A CR and its LF in two reads, an event over many reads: the same events."""
    chat = data.draw(st.booleans())
    nl = data.draw(st.sampled_from(list(ENDINGS.values())))
    whole = stream(chat, 0, nl)
    cut = data.draw(st.integers(0, len(whole)))
    pieces = data.draw(st.lists(st.integers(0, cut), max_size=12))
    ids, dones, roles = client_view(resumed_run(whole[:cut], chat, nl, pieces))
    assert ids == TOKENS and dones == 1 and roles == chat


def test_the_ids_a_client_cannot_have_make_the_stream_inexact():
    """An event the router cannot read (not JSON, text without ids) went to the client:
    its ids are unknown, so a continuation would be wrong; the stream says why instead."""
    for bad in (b"data: {\"choices\": [{\"text\": \"x\"}]}\n\n", b"data: {\"id\": \n\n", b"data: 3\n\n"):
        s = SseSplice()
        assert s.feed(bad) == [bad] and not s.exact and s.inexact and s.delivered == []


def test_a_backend_event_without_end_is_bounded():
    """Past MAX_EVENT bytes without an event's end the node misbehaves; the whole
    events before it still go out (and only they count as delivered)."""
    s = SseSplice()
    whole = event({"choices": [{"token_ids": [5], "text": "a"}]}, "\n")
    assert s.feed(whole + b"data: " + b"x" * (MAX_EVENT // 2)) == [whole] and not s.oversized
    assert s.feed(b"x" * (MAX_EVENT // 2 + 16)) == [] and s.oversized and s.delivered == [5]
    assert s.cut() > MAX_EVENT and not s.oversized
    assert s.feed(b"data: [DONE]\n\n") == [b"data: [DONE]\n\n"]
