"""The DeepEP facade's specs, derived from call shapes; no GPU or PyTorch needed."""

import epc
from epc import deep_ep


def test_low_latency_specs_follow_the_call():
    s = deep_ep.low_latency_spec(7168, 256, 8, 8, 128, use_fp8=True)
    assert (s.mode, s.hidden, s.experts, s.top_k, s.ranks, s.max_tokens_per_rank) == (
        "low_latency", 7168, 256, 8, 8, 128)
    assert s.dispatch_dtype == "fp8_e4m3" and "f32" in s.yaml
    ue8m0 = deep_ep.low_latency_spec(7168, 256, 8, 8, 128, use_fp8=True, use_ue8m0=True)
    assert "ue8m0" in ue8m0.yaml and ue8m0.hash != s.hash
    bf16 = deep_ep.low_latency_spec(7168, 256, 8, 8, 128, use_fp8=False, index_dtype="i32")
    assert bf16.dispatch_dtype == "bf16" and "i32" in bf16.yaml
    # The same shapes give the same spec (the facade's cache key).
    assert deep_ep.low_latency_spec(7168, 256, 8, 8, 128) == s
    assert deep_ep.Buffer.get_low_latency_rdma_size_hint(128, 7168, 8, 256) > 0


def test_high_throughput_specs_round_tokens_up():
    s = deep_ep.high_throughput_spec(7168, 256, 8, 8, 3000)
    assert (s.mode, s.max_tokens_per_rank, s.ranks) == ("high_throughput", 4096, 8)
    assert "max_recv_tokens_per_rank: 32768" in s.yaml and "flat" in s.yaml
    assert deep_ep.high_throughput_spec(7168, 256, 8, 8, 1).max_tokens_per_rank == 128
    try:
        deep_ep.high_throughput_spec(7168, 255, 8, 8, 16)
    except epc.SpecError as e:
        assert "experts" in str(e)
    else:
        raise AssertionError("255 experts over 8 ranks was accepted")
