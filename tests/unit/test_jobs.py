"""vigil.core.jobs: job files, chunks, records read as untrusted, and which
job a free node claims; and `vigil job` refusing bad input with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vigil.core.jobs import (MAX_CHUNK_BYTES, MAX_INPUT_CHARS, JobRecordError, JobSpec, Progress, chunked,
                             parse_chunk, parse_inputs, parse_progress, parse_spec, pick_job)
from vigil.errors import ConfigError


def spec(job="j", total=10, chunk=4, submitted=1.0) -> JobSpec:
    return JobSpec(job, "m", total, chunk, -(-total // chunk), submitted, "op", "sha")


def test_input_files_lines_and_jsonl():
    assert parse_inputs("a\n\n b \nc", "lines", "f") == ["a", " b ", "c"]
    assert parse_inputs('"a"\n{"input": "b"}\n\n"c d"\n', "jsonl", "f") == ["a", "b", "c d"]


@pytest.mark.parametrize("text,fmt,says", [
    ("", "lines", "1 to 100000 inputs"),
    ("\n\n", "lines", "1 to 100000 inputs"),
    ('"a"\n{nope\n', "jsonl", "f line 2"),
    ('"a"\n42\n', "jsonl", "must be a non-empty string"),
    ('{"text": "a"}\n', "jsonl", "must be a non-empty string"),
    ('""\n', "jsonl", "must be a non-empty string"),
    ("x" * (MAX_INPUT_CHARS + 1), "lines", "at most 32768 characters"),
])
def test_bad_input_files_are_named_by_line(text, fmt, says):
    with pytest.raises(ConfigError, match=says):
        parse_inputs(text, fmt, "f")


def test_chunks_are_bounded_by_count_and_bytes():
    assert chunked(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    for bad in (0, -1, 257):
        with pytest.raises(ConfigError, match="--chunk"):
            chunked(["a"], bad)
    big = ["x" * 30_000] * 20
    with pytest.raises(ConfigError, match=f"over {MAX_CHUNK_BYTES}"):
        chunked(big, 20)
    assert len(chunked(big, 10)) == 2


def test_records_round_trip_and_untrusted_ones_are_refused():
    s = spec()
    assert parse_spec(s.record(), "k") == s
    p = Progress().claimed("n1", 5.0).committed(s, 4, 6.0)
    assert parse_progress(p.record(), "k") == p and (p.state, p.next, p.done, p.claims) == ("running", 1, 4, 1)
    done = p.committed(s, 4, 7.0).committed(s, 2, 8.0)
    assert (done.state, done.done) == ("done", 10)
    for raw in ("[]", "{bad", json.dumps({**json.loads(s.record()), "chunks": 2}),
                json.dumps({**json.loads(s.record()), "total": True}),
                json.dumps({**json.loads(s.record()), "id": "../x"})):
        with pytest.raises(JobRecordError):
            parse_spec(raw, "k")
    for raw in (json.dumps({**json.loads(p.record()), "state": "weird"}),
                json.dumps({**json.loads(p.record()), "next": -1}), "null"):
        with pytest.raises(JobRecordError):
            parse_progress(raw, "k")
    assert parse_chunk('["a", "b"]', "k", s, 2) == ["a", "b"], "the last chunk holds the rest"
    for raw in ('["a"]', '["a", 1, "b", "c"]', '{"a": 1}', "x"):
        with pytest.raises(JobRecordError):
            parse_chunk(raw, "k", s, 0)


def test_a_free_node_claims_the_oldest_open_job_nobody_owns():
    specs = {j: spec(j, submitted=t) for j, t in (("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 0.5))}
    progress = {"a": Progress(), "b": Progress("running"), "c": Progress(), "d": Progress("done")}
    assert pick_job(specs, progress, set()) == "b"
    assert pick_job(specs, progress, {"b"}) == "c"
    assert pick_job(specs, progress, {"b", "c", "a"}) is None
    assert pick_job(specs, {k: v for k, v in progress.items() if k != "b"}, set()) == "c", \
        "a job without a checkpoint is not claimed"


@pytest.mark.parametrize("args,says", [
    (["--input", "/nonexistent/file"], "cannot be read"),
    (["--input", "EMPTY"], "1 to 100000 inputs"),
    (["--input", "GOOD", "--chunk", "0"], "--chunk"),
    (["--input", "GOOD", "--id", "no/slash"], "--id"),
])
def test_submit_refuses_bad_input_before_touching_the_cluster(tmp_path, args, says):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "good.txt").write_text("one\ntwo\n")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "good.txt") if a == "GOOD" else a
            for a in args]
    p = subprocess.run([sys.executable, "-m", "vigil", "job", "submit", "--etcd", "http://127.0.0.1:1",
                        "--cluster", "c", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and says in p.stderr, p.stderr
