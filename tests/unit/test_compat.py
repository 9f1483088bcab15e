"""Issue 12 #3: the compatibility gate as pure code: a workload's requirements
against recorded node fingerprints, and the cluster's homogeneity report."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.compat import differences, mismatches, parse_requirement
from vigil.store.member_record import compat_problem

N1 = {"driver": "535.161.08", "cuda_driver": "12.1", "gpu_model": "NVIDIA H100 80GB HBM3",
      "compute_capability": "9.0", "gpu_count": 8, "gpu_memory_mib": 81559, "cpu_flags": ["avx2", "avx512f"],
      "kernel": "5.15.0-105-generic", "python": "3.11.7", "engines": {"torch": "2.3.1", "torch_cuda": "12.1"}}
N2 = {**N1, "cuda_driver": "12.2", "driver": "535.183.01"}
NOGPU = {"gpu": "no GPU: NVML library not found (no NVIDIA driver on this node)", "cpu_flags": ["avx2"],
         "kernel": "6.1.0", "python": "3.11.2", "engines": {}}


def test_a_node_that_satisfies_the_workload_has_no_mismatch():
    req = parse_requirement({"cuda_driver": ">=12.1", "compute_capability": ">=8.0", "gpu_model": "NVIDIA H100*",
                             "gpu_memory_mib": ">=40000", "cpu_flags": ["avx512f"], "engines.torch": ">=2.3"})
    assert mismatches(N1, req) == [] and mismatches(N2, req) == []


def test_the_seeds_cuda_mismatch_is_named():
    req = parse_requirement({"cuda_driver": "==12.1"})
    assert mismatches(N2, req) == ["cuda_driver: 12.2, required ==12.1"]
    assert mismatches(N1, parse_requirement({"cuda_driver": "12.1"})) == []


def test_versions_compare_number_by_number_and_missing_values_fail():
    assert mismatches({"cuda_driver": "12.10"}, {"cuda_driver": ">12.9"}) == []
    out = mismatches(NOGPU, parse_requirement({"cuda_driver": ">=12.1", "cpu_flags": ["avx512f", "avx2"],
                                               "gpu_model": ["NVIDIA A100*", "NVIDIA H100*"]}))
    assert out[0].startswith("cuda_driver: required >=12.1, this node has none (no GPU: NVML library not found")
    assert out[1] == "cpu_flags: missing avx512f" and out[2].startswith("gpu_model: required")


@pytest.mark.parametrize("raw, words", [
    ({"cuda": ">=12"}, "requires.cuda: unknown"), ({"cuda_driver": "about 12"}, "is not a condition"),
    ({"cpu_flags": "avx512f"}, "a list of flags"), ("cuda>=12", "must be a mapping"),
    ({"gpu_model": 5}, "a glob")])
def test_a_bad_requirement_names_the_key_and_the_fix(raw, words):
    with pytest.raises(ValueError) as e:
        parse_requirement(raw)
    assert words in str(e.value)


def test_homogeneity_names_which_node_has_what():
    diff = differences({"n1": N1, "n2": N2, "n3": N1})
    assert diff == {"driver": {"535.161.08": ["n1", "n3"], "535.183.01": ["n2"]},
                    "cuda_driver": {"12.1": ["n1", "n3"], "12.2": ["n2"]}}
    assert "gpu_model" in differences({"n1": N1, "n4": NOGPU})


values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
                      lambda inner: st.one_of(st.lists(inner, max_size=3),
                                              st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
keys = st.sampled_from(["driver", "cuda_driver", "gpu_model", "compute_capability", "gpu_count", "gpu_memory_mib",
                        "cpu_flags", "kernel", "python", "engines", "other"])
VALID = {"cuda_driver": st.sampled_from([">=12.1", "<13", "12.2"]), "kernel": st.just(">=5.15"),
         "python": st.just("==3.11"), "engines.torch": st.sampled_from([">=2.3", "<3"]),
         "gpu_count": st.just(">=8"), "gpu_model": st.one_of(st.just("NVIDIA*"), st.lists(st.just("H100*"))),
         "cpu_flags": st.lists(st.sampled_from(["avx2", "avx512f"]), max_size=2)}
requirements = st.lists(st.sampled_from(sorted(VALID)), max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: VALID[n] for n in names}))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(keys, values, max_size=6), requirements)
def test_a_fingerprint_a_member_record_accepts_never_breaks_the_gate(fp, raw):
    """The class of a defect a review found (engines as a list passed the record's
    check, then failed `vigil status`'s compatibility report): whatever fingerprint
    the record's check lets through, every requirement it accepts is judged."""
    if compat_problem(raw, fp) is not None:
        return
    assert isinstance(mismatches(fp, parse_requirement(raw)), list)
    differences({"n1": fp, "n2": N1})
