"""Specs, NVRTC compiles and errors from Python; no GPU needed."""

import os
import pathlib

import pytest

import epc

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_builtin_specs_load_by_name():
    names = epc.builtin_spec_names()
    assert "deepseek-v3-ll" in names and "qwen3-235b-a22b-ht" in names
    s = epc.spec(builtin="deepseek-v3-ll")
    assert (s.name, s.mode, s.hidden, s.experts, s.top_k) == ("deepseek-v3-ll", "low_latency", 7168, 256, 8)
    assert s.dispatch_dtype == "fp8_e4m3" and s.local_experts == s.experts // s.ranks
    assert "deepseek-v3-ll" in repr(s)


def test_yaml_file_and_keywords_give_the_same_spec():
    path = REPO / "specs" / "gpt-oss-120b-ll.yaml"
    from_file = epc.spec(path=str(path))
    from_text = epc.spec(path.read_text())
    from_canonical = epc.spec(from_file.yaml)
    assert from_file == from_text == from_canonical
    assert from_file.hash == from_canonical.hash and hash(from_file) == hash(from_canonical)
    kw = epc.spec(
        name="kw",
        mode="low_latency",
        hidden=7168,
        dispatch_dtype="fp8_e4m3",
        fp8={"block": 128, "scale": "ue8m0"},
        experts=64,
        top_k=4,
        ranks=8,
        max_tokens_per_rank=128,
    )
    assert (kw.name, kw.dispatch_dtype, kw.ranks) == ("kw", "fp8_e4m3", 8)
    assert "ue8m0" in kw.yaml
    assert kw.with_ranks(4).ranks == 4


def test_spec_errors_name_the_place_and_the_rule():
    with pytest.raises(epc.SpecError) as bad:
        epc.spec("name: x\nmode: low_latency\nhidden: \"7168\"\nexperts: 64\ntop_k: 4\nranks: 8\nmax_tokens_per_rank: 128\n")
    message = str(bad.value)
    assert "3:9" in message and "hidden" in message and "quoted" in message
    with pytest.raises(epc.SpecError) as bad:
        epc.spec(name="kw", mode="low_latency", hiden=7168, experts=64, top_k=4, ranks=8, max_tokens_per_rank=128)
    assert "<keywords>" in str(bad.value) and "hidden" in str(bad.value)
    assert issubclass(epc.SpecError, epc.EpcError) and issubclass(epc.EpcError, RuntimeError)
    with pytest.raises(epc.SpecError):
        epc.spec(path="/nonexistent/spec.yaml")


def test_one_source_and_known_names():
    with pytest.raises(ValueError, match="exactly one"):
        epc.spec()
    with pytest.raises(ValueError, match="exactly one"):
        epc.spec("name: x\n", builtin="deepseek-v3-ll")
    with pytest.raises(ValueError, match="did you mean `deepseek-v3-ll`"):
        epc.spec(builtin="deepseek-v3-l")


def test_every_builtin_spec_compiles_with_nvrtc():
    try:
        kernels = [k for name in epc.builtin_spec_names() for k in epc.compile(epc.spec(builtin=name))]
    except epc.UnavailableError as e:
        if os.environ.get("EPC_REQUIRE_NVRTC") == "1":
            raise
        pytest.skip(f"no NVRTC: {e}")
    assert len(kernels) >= 20
    for k in kernels:
        assert k["registers"] and 8 <= k["registers"] <= 255, k
        assert k["file"].endswith(".cu")
    # The second compile is served by the cache.
    again = epc.compile(epc.spec(builtin=epc.builtin_spec_names()[0]))
    assert all(k["cached"] for k in again)
    with pytest.raises(epc.EpcError, match="sm_"):
        epc.compile(epc.spec(builtin="deepseek-v3-ll"), arch="compute_90")


def test_a_group_without_a_gpu_says_what_is_missing():
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU is present; tests/test_gpu.py runs the groups")
    with pytest.raises(epc.UnavailableError, match="driver|GPU"):
        epc._epc._Group.virtual_ranks(epc.spec(builtin="gpt-oss-120b-ll"), 0)
