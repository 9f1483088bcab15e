"""vigil.core.jobs: job files, chunks, records read as untrusted, and which
job a free node claims; and `vigil job` refusing bad input with exit 2."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from vigil.cli.job_cmd import _floats
from vigil.cli.main import main
from vigil.core.jobs import (MAX_CHUNK_BYTES, MAX_INPUT_CHARS, JobRecordError, JobSpec, Progress, chunked, job_state,
                             crowded, parse_chunk, parse_inputs, parse_progress, parse_spec, pick_shard)
from vigil.errors import ConfigError, VigilError


def spec(job="j", total=10, chunk=4, submitted=1.0, shards=1) -> JobSpec:
    return JobSpec(job, "m", total, chunk, -(-total // chunk), shards, submitted, "op", "sha")


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


def test_shards_split_the_chunks_evenly_and_contiguously():
    s = spec(total=100, chunk=10, shards=3)
    assert [s.shard_range(i) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [(p.next, p.end, p.state) for p in s.checkpoints()] == [(0, 3, "queued"), (3, 6, "queued"),
                                                                    (6, 10, "queued")]


def test_records_round_trip_and_untrusted_ones_are_refused():
    s = spec()
    assert parse_spec(s.record(), "k") == s
    p = s.checkpoints()[0].claimed("n1", 5.0).committed(4, 6.0)
    assert parse_progress(p.record(), "k", s, 0) == p
    assert (p.state, p.next, p.end, p.done, p.claims) == ("running", 1, 3, 4, 1)
    done = p.committed(4, 7.0).committed(2, 8.0)
    assert (done.state, done.done) == ("done", 10)
    for raw in ("[]", "{bad", json.dumps({**json.loads(s.record()), "chunks": 2}),
                json.dumps({**json.loads(s.record()), "total": True}),
                json.dumps({**json.loads(s.record()), "shards": 4}),
                json.dumps({**json.loads(s.record()), "id": "../x"})):
        with pytest.raises(JobRecordError):
            parse_spec(raw, "k")
    for raw in (json.dumps({**json.loads(p.record()), "state": "weird"}),
                json.dumps({**json.loads(p.record()), "next": 4}),
                json.dumps({**json.loads(p.record()), "end": 2}), "null"):
        with pytest.raises(JobRecordError):
            parse_progress(raw, "k", s, 0)
    with pytest.raises(JobRecordError):
        parse_progress(p.record(), "k", s, 1), "no shard 1 in a one-shard job"
    assert parse_chunk('["a", "b"]', "k", s, 2) == ["a", "b"], "the last chunk holds the rest"
    for raw in ('["a"]', '["a", 1, "b", "c"]', '{"a": 1}', "x"):
        with pytest.raises(JobRecordError):
            parse_chunk(raw, "k", s, 0)


def test_a_jobs_state_is_its_shards():
    q, r, d = Progress(), Progress("running"), Progress("done")
    assert [job_state(x) for x in ([q, q], [q, r], [d, q], [d, d], [d, Progress("failed")],
                                   [r, Progress("cancelled")])] == ["queued", "running", "running", "done",
                                                                    "failed", "cancelled"]


def test_a_free_node_claims_the_first_free_shard_of_the_oldest_open_job():
    specs = {j: spec(j, submitted=t, shards=2) for j, t in (("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 0.5))}
    progress = {("a", 0): Progress(), ("a", 1): Progress(), ("b", 0): Progress("running"),
                ("b", 1): Progress("done"), ("c", 0): Progress("done"), ("c", 1): Progress(),
                ("d", 0): Progress("failed"), ("d", 1): Progress()}
    assert pick_shard(specs, progress, set()) == ("b", 0), "d failed: its open shard is not taken"
    assert pick_shard(specs, progress, {("b", 0)}) == ("c", 1)
    assert pick_shard(specs, progress, {("b", 0), ("c", 1)}) == ("a", 0)
    assert pick_shard(specs, progress, {("b", 0), ("c", 1), ("a", 0), ("a", 1)}) is None
    del progress["a", 1]
    assert pick_shard(specs, progress, {("b", 0), ("c", 1)}) is None, "a job missing a checkpoint is not claimed"


def test_an_orphaned_shard_is_claimed_before_a_fresh_one():
    """Of 8 shards, the one whose owner died (claimed before, running, owner gone) is
    taken first by a node that finished its own; fresh ones follow in order."""
    specs = {"j": spec("j", total=64, shards=8)}
    progress = {("j", s): Progress() for s in range(8)}
    progress["j", 0] = progress["j", 1] = Progress("done", claims=1)
    progress["j", 5] = Progress("running", claims=1, node="n3")  # n3 died: its owner record is gone
    progress["j", 2] = progress["j", 3] = Progress("running", claims=1, node="n1")
    owned = {("j", 2), ("j", 3)}
    assert pick_shard(specs, progress, owned) == ("j", 5)
    assert pick_shard(specs, progress, owned | {("j", 5)}) == ("j", 4)


def test_a_crowded_domain_leaves_a_fresh_shard_to_another_a_while():
    domains = {"a1": "rack-a", "a2": "rack-a", "b1": "rack-b", "c1": "rack-c", "d1": "rack-d"}
    running = Progress("running", node="a1", claims=1)
    progress = {("j", 0): running, ("j", 1): Progress(), ("j", 2): Progress(), ("k", 0): Progress("running", node="b1"),
                ("k", 1): Progress("done", node="c1")}
    owned = {("j", 0), ("k", 0)}
    assert crowded("j", 1, progress, owned, domains, "a2"), "rack-a runs one of j's shards, rack-b and rack-c none"
    assert not crowded("j", 1, progress, owned, domains, "b1"), "k's shard does not count for j"
    progress["j", 2] = Progress("running", node="b1", claims=1)
    owned |= {("j", 2)}
    assert crowded("j", 1, progress, owned, domains, "a2") and not crowded("j", 1, progress, owned, domains, "c1")
    del progress["k", 1]
    assert not crowded("j", 1, progress, owned, domains, "a2"), "rack-c and rack-d never took a shard: not counted"
    assert not crowded("j", 1, progress, owned - {("j", 0)}, domains, "a2"), "an orphaned shard is not running"
    progress["j", 1] = Progress(claims=1)
    assert not crowded("j", 1, progress, owned, domains, "a2"), "an orphan is resumed at once, wherever"
    assert not crowded("j", 3, progress, owned, domains, "a2") and not crowded("j", 1, progress, owned, {}, "a2")
    one_rack = {n: "rack-a" for n in domains}
    progress["j", 1] = Progress()
    assert not crowded("j", 1, progress, owned, one_rack, "a2"), "one domain: nowhere else to go"


@pytest.mark.parametrize("args,says", [
    (["--input", "/nonexistent/file"], "cannot be read"),
    (["--input", "EMPTY"], "1 to 100000 inputs"),
    (["--input", "GOOD", "--chunk", "0"], "--chunk"),
    (["--input", "GOOD", "--id", "no/slash"], "--id"),
    (["--input", "GOOD", "--shards", "0"], "--shards"),
])
def test_submit_refuses_bad_input_before_touching_the_cluster(tmp_path, capsys, args, says):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "good.txt").write_text("one\ntwo\n")
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "good.txt") if a == "GOOD" else a
            for a in args]
    rc = main(["job", "submit", "--etcd", "http://127.0.0.1:1", "--cluster", "c", *args])
    err = capsys.readouterr().err
    assert rc == 2 and says in err, err


def test_results_decode_float32_and_name_a_record_that_is_not():
    assert _floats(base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode(), 0) == [0.5, -1.0, 2.0]
    with pytest.raises(VigilError, match="chunk 7: an embedding is not base64"):
        _floats("not*base64", 7)


def test_a_runner_of_a_crowded_domain_claims_after_spread_wait():
    from vigil.agent.job_claims import SPREAD_WAIT, ShardClaimer
    from vigil.store.keys import Keys
    from vigil.testing import FakeClock, MemoryStore

    clock = FakeClock()
    runner = ShardClaimer(MemoryStore(clock), Keys("c"), "a2", clock, lambda *a, **k: None,
                          {"a1": "rack-a", "a2": "rack-a", "b1": "rack-b"})
    progress = {("j", 0): Progress("running", node="a1", claims=1), ("j", 1): Progress(),
                ("old", 0): Progress("done", node="b1", claims=1)}  # rack-b's nodes take jobs
    owned = {("j", 0)}
    assert runner.leave_to_others(("j", 1), progress, owned)
    clock.advance(SPREAD_WAIT - 0.1)
    assert runner.leave_to_others(("j", 1), progress, owned), "rack-b still has the first chance"
    clock.advance(0.1)
    assert not runner.leave_to_others(("j", 1), progress, owned), "nobody of rack-b took it: take it"
