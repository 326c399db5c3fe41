"""The PyTorch baseline of high-throughput dispatch and combine on one GPU: the permute a grouped
GEMM needs (`index_select` of each (token, slot) row in expert order) and the weighted unpermute
(`index_add_` of each row times its weight), on the routings of `epc bench`.

    epc bench --csv bench.csv --routing-out routing        # virtual ranks, one GPU
    python3 scripts/bench/torch_permute.py bench.csv routing

For every HT workload of the CSV, every rank's routing is permuted and unpermuted in turn (as the
virtual ranks do all ranks' work on one GPU); timed with CUDA events (10 warm-ups, 50 timed
calls). Prints epc's dispatch and combine beside them, and the speed-up.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read_rows, routing, timed_us, workloads  # noqa: E402


def main():
    csv_path, folder = sys.argv[1], sys.argv[2]
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}")
    print(f"{'workload':<28} {'T':>5} {'R':>3} {'permute us':>10} {'epc dispatch':>12} {'x':>6} "
          f"{'unpermute us':>12} {'epc combine':>11} {'x':>6}")
    for dispatch, combine in workloads(read_rows(csv_path)):
        if dispatch["mode"] != "high_throughput":
            continue
        t, h, r = dispatch["tokens_per_rank"], dispatch["hidden"], dispatch["ranks"]
        ranks = []
        for rank in range(r):
            idx, w = routing(folder, dispatch, rank)
            idx = torch.from_numpy(idx).cuda()
            w = torch.from_numpy(w).cuda()
            flat = idx.flatten()
            keep = (flat >= 0).nonzero().squeeze(1)
            # Rows in expert order (a stable sort keeps token order inside each expert).
            order = keep[torch.sort(flat[keep], stable=True).indices]
            token = (order // idx.shape[1]).contiguous()
            weight = w.flatten()[order].to(torch.bfloat16).unsqueeze(1)
            x = torch.randn(t, h, dtype=torch.bfloat16, device="cuda")
            rows = torch.empty(len(order), h, dtype=torch.bfloat16, device="cuda")
            out = torch.zeros(t, h, dtype=torch.bfloat16, device="cuda")
            ranks.append((x, token, weight, rows, out))

        def permute():
            for x, token, _, rows, _ in ranks:
                torch.index_select(x, 0, token, out=rows)

        def unpermute():
            for _, token, weight, rows, out in ranks:
                out.zero_()
                out.index_add_(0, token, rows * weight)

        p, u = timed_us(permute), timed_us(unpermute)
        print(f"{dispatch['workload']:<28} {t:>5} {r:>3} {p:>10.1f} {dispatch['time_us']:>12.1f} "
              f"{p / dispatch['time_us']:>6.2f} {u:>12.1f} {combine['time_us']:>11.1f} "
              f"{u / combine['time_us']:>6.2f}")


if __name__ == "__main__":
    main()
