"""epc's NCCL group and the DeepEP facade under torchrun, one process per GPU, on every GPU of
the machine (torchrun_ranks.py is the program each rank runs). Skipped with the reason where
fewer than two GPUs are present, or PyTorch is missing."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch") if os.environ.get("EPC_REQUIRE_GPU") != "1" else __import__("torch")


def test_group_and_facade_under_torchrun_on_every_gpu():
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip(f"needs 2 GPUs or more, {n} present")
    print(f"GPU test_group_and_facade_under_torchrun_on_every_gpu: {n} x {torch.cuda.get_device_name()}")
    program = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_ranks.py")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", program],
        capture_output=True, text=True, timeout=600,
    )
    print(run.stdout + run.stderr)
    assert run.returncode == 0, f"torchrun exited with {run.returncode}"
    for rank in range(n):
        for part in ("low latency: 4 calls match", "high throughput: 2 calls match", "DeepEP facade"):
            assert any(line.startswith(f"rank {rank} of {n}") and part in line for line in run.stdout.splitlines()), (rank, part)
