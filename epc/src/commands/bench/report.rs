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
         as it costs the GPU among many calls issued back to back on the stream with the host \
         ahead (a call timed so, split as the two phases timed alone between events split it; \
         the CSV has both: stream_call_us, events_us); parts: with the hook, its send and \
         receive launches, each between events. copy: a device copy of the \
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
    print_calls(rows);
}

/// The same-traffic copies of both phases of `r`'s call (the LL rows of its workload and
/// tokens), where the rows have both.
fn call_copies_us(rows: &[Row], r: &Row) -> Option<f64> {
    let copy = |phase: &str| {
        rows.iter()
            .find(|o| {
                o.floor.is_some()
                    && o.workload == r.workload
                    && o.tokens == r.tokens
                    && o.phase == phase
            })
            .map(|o| o.same_traffic_us)
    };
    Some(copy("dispatch")? + copy("combine")?)
}

/// The LL calls, whole, against both phases' same-traffic copies: inside a call, a phase's
/// rows leave the L2 while the next phase runs (the dispatch's, on one GPU, during the
/// combine), so the call is where each byte is paid for.
fn print_calls(rows: &[Row]) {
    println!(
        "\n{:<28} {:>5} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>6}",
        "workload", "T", "copies us", "call us", "x", "paced us", "host us", "graph us", "x"
    );
    for r in rows.iter().filter(|r| r.phase == "dispatch") {
        let (Some(f), Some(copies)) = (r.floor, call_copies_us(rows, r)) else {
            continue;
        };
        println!(
            "{:<28} {:>5} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>9.1} {:>9.1} {:>6.2}",
            r.workload,
            r.tokens,
            copies,
            f.stream_call_us,
            f.stream_call_us / copies,
            f.stream_call_paced_us,
            f.stream_call_host_us,
            f.graph_call_us,
            f.graph_call_us / copies
        );
    }
    println!(
        "call: a whole call (dispatch, combine) among many back to back on the stream, on the GPU \
         with the host ahead (the calls queued before it starts them), and inside one CUDA graph \
         of many (graph); paced: the same calls issued as the host goes, on the GPU; host: the \
         host's time issuing a call (where it matches paced, the host set the pace); copies: the \
         two phases' same-traffic copies. On one GPU a phase's rows are still in the L2 when it \
         ends and go out while the next phase runs, so the split into phases charges the \
         dispatch's rows to the combine; the call pays for every byte once."
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
         graph_replay_us,graph_call_us,events_us,stream_call_us,call_same_traffic_us,\
         graph_call_ratio_to_same_traffic,stream_call_host_us,stream_call_paced_us\n",
    );
    for r in rows {
        let copies = call_copies_us(rows, r);
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
                || ",,,,,,,,,,,,,".to_owned(),
                |f| format!(
                    "{:.3},{:.4},{:.3},{:.3},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3},{},{},{:.3},{:.3}",
                    f.launches_us,
                    r.time_us / f.launches_us,
                    f.graph_us,
                    f.graph_launches_us,
                    f.graph_us / f.graph_launches_us,
                    f.graph_us / r.same_traffic_us,
                    f.graph_replay_us,
                    f.graph_call_us,
                    f.events_us,
                    f.stream_call_us,
                    copies.map_or(String::new(), |c| format!("{c:.3}")),
                    copies.map_or(String::new(), |c| format!("{:.4}", f.graph_call_us / c)),
                    f.stream_call_host_us,
                    f.stream_call_paced_us
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: &'static str, same_traffic_us: f64, floor: Option<Floor>) -> Row {
        Row {
            workload: "w".into(),
            mode: Mode::LowLatency,
            layout: None,
            ranks: 8,
            hidden: 7168,
            top_k: 8,
            experts: 256,
            tokens: 128,
            phase,
            time_us: 60.0,
            min_us: 59.0,
            max_us: 61.0,
            parts: (1.0, 58.0),
            counts: Counts {
                unique: 1000,
                traffic: 3000,
                written: 500,
                nccl_ep: Some(1000),
                deepep: 1000,
            },
            row_bytes: 14336,
            copy_us: 30.0,
            same_traffic_us,
            fanout_us: None,
            floor,
            nccl_ep_gbps: Some(16.7),
            deepep_gbps: 16.7,
        }
    }

    #[test]
    fn every_csv_line_has_the_header_s_columns_and_a_call_is_set_against_both_phases_copies() {
        let floor = Floor {
            launches_us: 5.0,
            graph_us: 50.0,
            graph_launches_us: 2.0,
            graph_replay_us: 52.0,
            graph_call_us: 90.0,
            events_us: 55.0,
            stream_call_us: 100.0,
            stream_call_paced_us: 110.0,
            stream_call_host_us: 108.0,
        };
        let mut ht = row("combine", 40.0, None);
        ht.mode = Mode::HighThroughput;
        let rows = [
            row("dispatch", 35.0, Some(floor)),
            row("combine", 40.0, Some(floor)),
            ht,
        ];
        let text = csv(&rows);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(lines.len(), 4);
        let header = &lines[0];
        for line in &lines[1..] {
            assert_eq!(line.len(), header.len(), "{line:?}");
        }
        let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
        for line in &lines[1..3] {
            assert_eq!(line[at("call_same_traffic_us")], "75.000");
            assert_eq!(line[at("graph_call_ratio_to_same_traffic")], "1.2000");
        }
        assert_eq!(lines[1][at("graph_ratio_to_same_traffic")], "1.4286");
        assert_eq!(lines[2][at("stream_call_us")], "100.000");
        assert_eq!(lines[2][at("stream_call_paced_us")], "110.000");
        assert_eq!(lines[2][at("stream_call_host_us")], "108.000");
        assert_eq!(lines[3][at("call_same_traffic_us")], "");
    }
}
