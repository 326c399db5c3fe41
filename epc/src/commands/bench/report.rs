//! `epc bench`'s table, CSV and plot.

use std::fmt::Write as _;

use ep_codegen::Mode;

use super::Floor;
use super::bytes::Counts;
use crate::svg;

/// One phase of one workload, joined over the job's ranks.
pub struct Row {
    pub workload: String,
    pub mode: Mode,
    /// The HT receive layout (`None` in LL mode).
    pub layout: Option<ep_codegen::Layout>,
    pub ranks: u32,
    pub hidden: u32,
    pub top_k: u32,
    pub experts: u32,
    pub tokens: usize,
    pub phase: &'static str,
    /// Mean over the ranks (virtual ranks: all ranks' launches together).
    pub time_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// LL: send and receive; HT dispatch: notify and data; HT combine: data.
    pub parts: (f64, f64),
    /// This process's bytes (rank 0's over NCCL, all ranks' on virtual ranks).
    pub counts: Counts,
    /// Payload bytes of one row of the phase.
    pub row_bytes: u64,
    /// A device-to-device copy of `counts.unique` bytes on this GPU.
    pub copy_us: f64,
    /// A device-to-device copy moving `counts.traffic` HBM bytes on this GPU.
    pub same_traffic_us: f64,
    /// HT dispatch: its row copies alone, the same rows to the same places with nothing else
    /// (mean over the ranks).
    pub fanout_us: Option<f64>,
    /// LL: the launch floor, and the phase and its floor as CUDA-graph replays (means over the
    /// ranks).
    pub floor: Option<Floor>,
    pub nccl_ep_gbps: Option<f64>,
    pub deepep_gbps: f64,
}

impl Row {
    fn gbps(&self) -> f64 {
        self.counts.unique as f64 / self.time_us / 1e3
    }

    fn parts_label(&self) -> &'static str {
        match (self.mode, self.phase) {
            (Mode::LowLatency, _) => "hook send+recv",
            (Mode::HighThroughput, "dispatch") => "notify+data",
            _ => "data",
        }
    }

    fn parts_text(&self) -> String {
        match self.parts_label() {
            "data" => format!("{:.1}", self.parts.0),
            _ => format!("{:.1}+{:.1}", self.parts.0, self.parts.1),
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// The table: time, the parts, unique bytes and GB/s, each yardstick and the ratio to it, and
/// GB/s as NCCL EP and DeepEP count.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<28} {:>5} {:<9} {:>9} {:>15} {:>12} {:>7} {:>9} {:>6} {:>9} {:>6} {:>9} {:>6} {:>8} {:>8}",
        "workload",
        "T",
        "phase",
        "time us",
        "parts us",
        "unique B",
        "GB/s",
        "copy us",
        "x",
        "same-tr us",
        "x",
        "fan-out us",
        "x",
        "NCCL-EP",
        "DeepEP"
    );
    for r in rows {
        println!(
            "{:<28} {:>5} {:<9} {:>9.1} {:>15} {:>12} {:>7.1} {:>9.1} {:>6.2} {:>9.1} {:>6.2} {:>9} {:>6} {:>8} {:>8.1}",
            r.workload,
            r.tokens,
            r.phase,
            r.time_us,
            r.parts_text(),
            r.counts.unique,
            r.gbps(),
            r.copy_us,
            r.time_us / r.copy_us,
            r.same_traffic_us,
            r.time_us / r.same_traffic_us,
            opt(r.fanout_us),
            r.fanout_us
                .map_or_else(|| "-".to_owned(), |f| format!("{:.2}", r.time_us / f)),
            opt(r.nccl_ep_gbps),
            r.deepep_gbps
        );
    }
    println!(
        "x: time over the yardstick (1.00 = as fast as the copy). LL: each phase in one launch, \
         as it costs among many calls issued back to back on the stream (a call timed so, split \
         as the two phases timed alone between events split it; the CSV has both: \
         stream_call_us, events_us); parts: with the hook, its send and receive launches, each \
         between events. copy: a device copy of the \
         unique payload bytes; same-tr: a copy moving the HBM bytes the phase minimally reads \
         and writes; fan-out (HT dispatch): its row copies alone, the same rows to the same \
         places with nothing else. NCCL-EP and DeepEP: GB/s per GPU as their benchmarks count \
         bytes."
    );
    if rows.iter().any(|r| r.floor.is_some()) {
        print_floors(rows);
    }
}

/// The LL rows' launch floors and CUDA-graph replays.
fn print_floors(rows: &[Row]) {
    println!(
        "\n{:<28} {:>5} {:<9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6}",
        "workload",
        "T",
        "phase",
        "time us",
        "floor us",
        "x",
        "graph us",
        "floor us",
        "x",
        "same-tr us",
        "x"
    );
    for r in rows {
        let Some(f) = r.floor else { continue };
        println!(
            "{:<28} {:>5} {:<9} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>6.2}",
            r.workload,
            r.tokens,
            r.phase,
            r.time_us,
            f.launches_us,
            r.time_us / f.launches_us,
            f.graph_us,
            f.graph_launches_us,
            f.graph_us / f.graph_launches_us,
            r.same_traffic_us,
            f.graph_us / r.same_traffic_us
        );
    }
    println!(
        "floor: the phase's launches made with empty kernels on the same grids, back to back on \
         the stream and in a graph; graph: the phase inside one CUDA graph of many calls, as a \
         serving step replayed as \
         a graph runs it (a call timed so, split as the two phases' replays, each a graph of its \
         own, split it; the CSV has both: graph_call_us, graph_replay_us); the last x is the \
         graph figure over the same-traffic copy."
    );
}

/// Every measurement as CSV (the columns the baseline scripts in `scripts/bench/` read).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "workload,mode,layout,ranks,hidden,top_k,experts,tokens_per_rank,phase,time_us,min_us,max_us,\
         parts,part1_us,part2_us,row_bytes,unique_bytes,traffic_bytes,written_bytes,gbps,copy_us,ratio_to_copy,\
         same_traffic_us,ratio_to_same_traffic,nccl_ep_bytes,nccl_ep_gbps,deepep_bytes,deepep_gbps,\
         fanout_us,ratio_to_fanout,launch_floor_us,ratio_to_launch_floor,graph_us,\
         graph_launch_floor_us,graph_ratio_to_launch_floor,graph_ratio_to_same_traffic,\
         graph_replay_us,graph_call_us,events_us,stream_call_us\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{},{:.3},{:.3},{},{},{},{},{:.2},{:.3},{:.4},{:.3},{:.4},{},{},{},{:.2},{},{},{}",
            r.workload,
            r.mode.as_str(),
            match r.layout {
                Some(ep_codegen::Layout::ExpertMajor) => "expert_major",
                Some(ep_codegen::Layout::Flat) => "flat",
                None => "",
            },
            r.ranks,
            r.hidden,
            r.top_k,
            r.experts,
            r.tokens,
            r.phase,
            r.time_us,
            r.min_us,
            r.max_us,
            r.parts_label(),
            r.parts.0,
            r.parts.1,
            r.row_bytes,
            r.counts.unique,
            r.counts.traffic,
            r.counts.written,
            r.gbps(),
            r.copy_us,
            r.time_us / r.copy_us,
            r.same_traffic_us,
            r.time_us / r.same_traffic_us,
            r.counts.nccl_ep.map_or(String::new(), |b| b.to_string()),
            r.nccl_ep_gbps.map_or(String::new(), |g| format!("{g:.2}")),
            r.counts.deepep,
            r.deepep_gbps,
            r.fanout_us.map_or(String::new(), |f| format!("{f:.3}")),
            r.fanout_us
                .map_or(String::new(), |f| format!("{:.4}", r.time_us / f)),
            r.floor.map_or_else(
                || ",,,,,,,,,".to_owned(),
                |f| format!(
                    "{:.3},{:.4},{:.3},{:.3},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3}",
                    f.launches_us,
                    r.time_us / f.launches_us,
                    f.graph_us,
                    f.graph_launches_us,
                    f.graph_us / f.graph_launches_us,
                    f.graph_us / r.same_traffic_us,
                    f.graph_replay_us,
                    f.graph_call_us,
                    f.events_us,
                    f.stream_call_us
                )
            ),
        );
    }
    out
}

/// Time against tokens per rank, each phase (and, LL, its CUDA-graph replay) with its
/// same-traffic copy dashed.
pub fn plot(rows: &[Row]) -> String {
    let mut series: Vec<svg::Series> = Vec::new();
    for r in rows {
        let graph = r
            .floor
            .map(|f| (format!("{} {} graph", r.workload, r.phase), f.graph_us));
        for (label, y) in [
            (format!("{} {}", r.workload, r.phase), r.time_us),
            (
                format!("{} {} same-traffic copy", r.workload, r.phase),
                r.same_traffic_us,
            ),
        ]
        .into_iter()
        .chain(graph)
        {
            match series.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push((r.tokens as f64, y)),
                None => series.push(svg::Series {
                    dashed: label.ends_with(" copy"),
                    label,
                    points: vec![(r.tokens as f64, y)],
                }),
            }
        }
    }
    svg::line_chart(
        "Dispatch and combine vs the same-traffic copy",
        "tokens per rank",
        "time (us)",
        &series,
    )
}
