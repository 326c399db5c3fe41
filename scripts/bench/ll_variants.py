#!/usr/bin/env python3
"""Measuring-only variants of the LL dispatch template, for `epc bench --templates DIR`.

Each variant takes one step out of ll_dispatch.cu.hbs, so that an A/B run against the unchanged
templates shows what that step costs a call. Their results are wrong by construction (rows land at
made-up places, counts are off): time them with `epc bench`, never check or ship them.

  base      the templates as they are
  nocopy    copy mode writes no rows (what everything but the rows costs)
  nohand    copy warps take a made-up row at once instead of waiting for the owner's hand-out
  noatomic  owners take a made-up base instead of the reservation atomic
  noreserve nohand and noatomic
  rowsonly  the one-launch entry streams the rows to made-up places and does nothing else: no ids
            counted, no reservation, hand-out, flags, receive or close (it writes dispatch_row, so
            the combine reads as many rows as it would)
  rowscount rowsonly behind a count like the send's (ids read, counted per block, two barriers)
  rowslate  rowsonly 550 ns late (a spin after the dependent-launch wait)
  nochain   nohand and noatomic, and the one-launch entry neither receives nor closes the call

A made-up row is rank * max_tokens + token: unique within an expert, since a token's experts
differ. On one GPU the bench's phase figures time the one-launch entry; in rowsonly the hook's
send and receive entries stay as they are.

  python3 scripts/bench/ll_variants.py ep-codegen/templates /tmp/v
  epc bench deepseek-v3-ll --ranks 8 --sweep --tokens 16 --templates /tmp/v/rowsonly --csv r.csv
"""

import shutil
import sys
from pathlib import Path

DISPATCH = "ll_dispatch.cu.hbs"

# Copy-mode warps: a made-up row instead of polling for the owner's hand-out.
MADE_UP_ROW = (
    """    const auto poll_row = [&]() {
      unsigned long long r = signals::load_relaxed_gpu(&rows[t * kTopK + lane]);""",
    """    const auto poll_row = [&]() {
      // MEASURING ONLY: a made-up row, no wait for the hand-out.
      if (rows != nullptr) return signals::tag(epoch, static_cast<unsigned>(a.rank * kMaxTokens + t + 1));
      unsigned long long r = signals::load_relaxed_gpu(&rows[t * kTopK + lane]);""",
)

# The copy lanes write dispatch_row themselves (no owner hands rows out).
OWN_DISPATCH_ROW = (
    """      my_dst = static_cast<int>(r & 0xffffffffull) - 1;
      if (my_dst >= 0) {""",
    """      my_dst = static_cast<int>(r & 0xffffffffull) - 1;
      if (first == 0) call_dispatch_row(a)[t * kTopK + lane] = make_int2(my_e, my_dst);
      if (my_dst >= 0) {""",
)

NO_ATOMIC = (
    """    int begin = n > 0 ? signals::fetch_add(reinterpret_cast<int*>(half + kCounterOffset) + l * kCounterStride, n, scope_of(a)) : 0;""",
    """    // MEASURING ONLY: a made-up base, no atomic.
    int begin = a.rank * kMaxTokens;""",
)

NO_COPY = (
    """    copy_tokens(a, epoch, timeout_ns, raise_flags);""",
    """    // MEASURING ONLY: no rows copied.
    if (a.tokens < 0) copy_tokens(a, epoch, timeout_ns, raise_flags);""",
)

# The one-launch entry's send, receive and close (the anchor of the variants that change them).
FUSED_TAIL = """  const unsigned epoch = ll::send(a, args.timeout_ns, s_count, s_base, ticket);
  if (blockIdx.x == gridDim.x - 1) ll::receive(a, epoch, args.timeout_ns, s_count);
  ll::close_call(a, epoch, ticket);
}"""

# How rowsonly's entry begins (the anchor of the variants built on it).
ROWS_ONLY_START = """  // MEASURING ONLY: the rows alone, at made-up places, nothing else.
  dependent_launch::begin();"""

ROWS_ONLY_ENTRY = (
    "  int ticket = 0;\n" + FUSED_TAIL,
    ROWS_ONLY_START
    + """
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *ll::call_epoch(a) = 1u;
    *ll::call_tokens(a) = a.tokens;
  }
  ll::copy_tokens(a, 1u, args.timeout_ns, [](bool) {});
  (void)s_count;
  (void)s_base;
}""",
)

ROWS_AFTER_COUNT = (
    ROWS_ONLY_START,
    """  // MEASURING ONLY: the rows alone, at made-up places, after a count as the send's.
  for (int e = threadIdx.x; e < ll::kNumExperts; e += ll::kThreads) s_count[e] = 0;
  dependent_launch::begin();
  __syncthreads();
  for (int i = threadIdx.x; i < a.tokens * ll::kTopK; i += ll::kThreads) {
    const ll::index_t e = a.topk_idx[i];
    if (e >= 0 && e < ll::kNumExperts && static_cast<int>(e) % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x)) atomicAdd(&s_count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0 && s_count[0] == 1234567) a.workspace[ll::kErrors] = 1;""",
)

ROWS_LATE = (
    ROWS_ONLY_START,
    """  // MEASURING ONLY: the rows alone, at made-up places, 550 ns late.
  dependent_launch::begin();
  {
    const unsigned long long t0 = signals::now_ns();
    while (signals::now_ns() - t0 < 550) {
    }
  }""",
)

NO_RECEIVE_NO_CLOSE = (
    FUSED_TAIL,
    """  const unsigned epoch = ll::send(a, args.timeout_ns, s_count, s_base, ticket);
  // MEASURING ONLY: no receive, no close.
  (void)epoch;
}""",
)

NO_TICKET = (
    """    ticket = atomicAdd(&ws[kDoneSend], 1);
  }
  return epoch;""",
    """    if (a.tokens < 0) ticket = atomicAdd(&ws[kDoneSend], 1);
  }
  return epoch;""",
)

ROWS_ONLY = [MADE_UP_ROW, OWN_DISPATCH_ROW, ROWS_ONLY_ENTRY]

VARIANTS = {
    "base": [],
    "nocopy": [NO_COPY],
    "nohand": [MADE_UP_ROW],
    "noatomic": [NO_ATOMIC],
    "noreserve": [MADE_UP_ROW, NO_ATOMIC],
    "rowsonly": ROWS_ONLY,
    "rowscount": ROWS_ONLY + [ROWS_AFTER_COUNT],
    "rowslate": ROWS_ONLY + [ROWS_LATE],
    "nochain": [MADE_UP_ROW, NO_ATOMIC, NO_RECEIVE_NO_CLOSE, NO_TICKET],
}


def patched(text, patches, name):
    """`text` with each (old, new) of `patches` replaced; every old must occur exactly once."""
    for old, new in patches:
        if text.count(old) != 1:
            sys.exit(f"{name}: the template changed; this anchor occurs {text.count(old)} times:\n{old}")
        text = text.replace(old, new)
    return text


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    templates, out = Path(sys.argv[1]), Path(sys.argv[2])
    source = (templates / DISPATCH).read_text()
    for name, patches in VARIANTS.items():
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(templates, dest, symlinks=False)
        (dest / DISPATCH).write_text(patched(source, patches, name))
        print(dest)


if __name__ == "__main__":
    main()
