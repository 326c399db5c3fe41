"""NCCL all-to-all moving the same routing as `epc bench --transport nccl`, one process per GPU.

    epc bench --transport nccl --csv bench.csv --routing-out routing
    torchrun --nproc-per-node N scripts/bench/all_to_all.py bench.csv routing

For every workload of the CSV, each rank sends each peer as many rows (of the phase's row bytes)
as epc's dispatch does (LL: one per valid slot; HT: one per token and destination rank) with
`torch.distributed.all_to_all_single`, and combine sends them back; timed with CUDA events
(10 warm-ups, 50 timed calls, mean per rank). Rank 0 prints epc's time beside it, and GB/s as
NCCL EP and DeepEP count bytes (the CSV's counts over each time).
"""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read_rows, rows_sent, timed_us, workloads  # noqa: E402


def mean_over_ranks(value):
    t = torch.tensor([value], dtype=torch.float64, device="cuda")
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def a2a_us(sends, me, row_bytes, reverse):
    """Mean time of one all_to_all_single moving sends[me, :] rows out and sends[:, me] in."""
    out_rows, in_rows = sends[me, :].tolist(), sends[:, me].tolist()
    if reverse:
        out_rows, in_rows = in_rows, out_rows
    src = torch.randint(0, 255, (sum(out_rows), row_bytes), dtype=torch.uint8, device="cuda")
    dst = torch.empty((sum(in_rows), row_bytes), dtype=torch.uint8, device="cuda")
    return timed_us(lambda: dist.all_to_all_single(dst, src, in_rows, out_rows), dist.barrier)


def main():
    csv_path, folder = sys.argv[1], sys.argv[2]
    dist.init_process_group("nccl")
    me, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", me)))
    lines = []
    for dispatch, combine in workloads(read_rows(csv_path)):
        if dispatch["ranks"] != world:
            continue
        sends = rows_sent(folder, dispatch)
        for row, reverse in ((dispatch, False), (combine, True)):
            t = mean_over_ranks(a2a_us(sends, me, row["row_bytes"], reverse))
            gbps = lambda b: f"{float(b) / t / 1e3:8.1f}" if b else "       -"  # noqa: E731
            lines.append(
                f"{row['workload']:<28} {row['tokens_per_rank']:>5} {row['phase']:<9} "
                f"{row['time_us']:>9.1f} {t:>9.1f} {row['time_us'] / t:>7.2f} "
                f"{row['nccl_ep_gbps'] or '-':>8} {gbps(row['nccl_ep_bytes'])} "
                f"{row['deepep_gbps']:>8} {gbps(row['deepep_bytes'])}"
            )
    if me == 0:
        print(f"NCCL all_to_all_single on {world} GPUs ({torch.cuda.get_device_name()}), "
              f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
        print(f"{'workload':<28} {'T':>5} {'phase':<9} {'epc us':>9} {'a2a us':>9} "
              f"{'epc/a2a':>7} {'NCCL-EP GB/s epc':>8} {'a2a':>8} {'DeepEP GB/s epc':>8} {'a2a':>8}")
        print("\n".join(lines))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
