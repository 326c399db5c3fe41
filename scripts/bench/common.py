"""Shared by the baselines: epc bench's CSV and routing files (epc bench --csv F --routing-out D)."""

import csv
import os

import numpy as np
import torch

WARMUP, ITERS = 10, 50


def timed_us(fn, before=None):
    """Mean time of `fn` in microseconds over ITERS calls after WARMUP, with CUDA events;
    `before` (a barrier, say) runs once between the warm-ups and the timed calls."""
    for _ in range(WARMUP):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if before is not None:
        before()
    start.record()
    for _ in range(ITERS):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1e3 / ITERS


def read_rows(path):
    """The rows of `epc bench --csv`, numbers converted."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("ranks", "hidden", "top_k", "experts", "tokens_per_rank", "row_bytes"):
            r[key] = int(r[key])
        for key in ("time_us", "min_us", "max_us"):
            r[key] = float(r[key])
    return rows


def routing(folder, row, rank):
    """Rank `rank`'s (topk_idx [T, K] int64, topk_weights [T, K] float32) of a CSV row."""
    stem = os.path.join(folder, f"{row['workload']}.T{row['tokens_per_rank']}.rank{rank}")
    return np.load(stem + ".topk_idx.npy"), np.load(stem + ".topk_weights.npy")


def rows_sent(folder, row):
    """`[R, R]` rows rank s sends rank d in a dispatch: LL and expert-major HT one per valid
    slot, flat HT one per (token, destination rank)."""
    r, e = row["ranks"], row["experts"]
    local = e // r
    sends = np.zeros((r, r), dtype=np.int64)
    for s in range(r):
        idx, _ = routing(folder, row, s)
        dest = np.where(idx >= 0, idx // local, -1)
        if row["mode"] == "low_latency" or row.get("layout") == "expert_major":
            for d in range(r):
                sends[s, d] = int((dest == d).sum())
        else:
            for d in range(r):
                sends[s, d] = int((dest == d).any(axis=1).sum())
    return sends


def workloads(rows):
    """(dispatch row, combine row) pairs of the CSV, in order."""
    by_key = {}
    for r in rows:
        by_key.setdefault((r["workload"], r["tokens_per_rank"]), {})[r["phase"]] = r
    return [(v["dispatch"], v["combine"]) for v in by_key.values() if "dispatch" in v and "combine" in v]
