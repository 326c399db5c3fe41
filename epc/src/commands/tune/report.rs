//! What `epc tune` shows and keeps: the table, the CSV rows and the SVG series.

use ep_codegen::Tuning;

use super::measure::Variant;
use crate::svg;

/// The label of a tuning: the knobs it sets (`warps 8 sms 66`; `defaults` when none).
pub fn label(t: &Tuning) -> String {
    let set: Vec<String> = [("warps", t.warps_per_block), ("sms", t.sms)]
        .iter()
        .filter_map(|(name, v)| v.map(|v| format!("{name} {v}")))
        .collect();
    if set.is_empty() {
        "defaults".to_owned()
    } else {
        set.join(" ")
    }
}

/// Every variant's registers and, per token count, dispatch / combine in microseconds.
pub fn print_table(found: &[Variant], tokens: &[usize]) {
    print!("  {:<24} {:>9}", "variant", "registers");
    for t in tokens {
        print!(" {:>17}", format!("T={t} d / c us"));
    }
    println!();
    for v in found {
        print!(
            "  {:<24} {:>9}",
            label(&v.tuning),
            v.compiled.as_ref().map_or_else(
                |e| format!("failed: {}", e.lines().next().unwrap_or("")),
                |r| r.to_string()
            )
        );
        for time in &v.times {
            let cell = match time {
                None => "-".to_owned(),
                Some(p) if p.total().is_finite() => {
                    format!("{:.1} / {:.1}", p.dispatch, p.combine)
                }
                Some(_) => "fails".to_owned(),
            };
            print!(" {cell:>17}");
        }
        println!();
    }
}

/// The CSV header.
pub const CSV_HEADER: &str =
    "spec,variant,warps_per_block,sms,registers,tokens,dispatch_us,combine_us,time_us\n";

/// One CSV row per variant and token count.
pub fn csv_rows(spec: &str, found: &[Variant], tokens: &[usize]) -> String {
    let mut csv = String::new();
    let knob = |v: Option<u32>| v.map_or("auto".into(), |v| v.to_string());
    for v in found {
        for (t, time) in tokens.iter().zip(&v.times) {
            let (d, c, total) = time.map_or((String::new(), String::new(), String::new()), |p| {
                (
                    format!("{:.3}", p.dispatch),
                    format!("{:.3}", p.combine),
                    format!("{:.3}", p.total()),
                )
            });
            csv.push_str(&format!(
                "{spec},{},{},{},{},{t},{d},{c},{total}\n",
                label(&v.tuning),
                knob(v.tuning.warps_per_block),
                knob(v.tuning.sms),
                v.compiled.as_ref().map_or(0, |r| *r),
            ));
        }
    }
    csv
}

/// Time per variant (x: its number, 1 = defaults), one series per phase and token count.
pub fn series(spec: &str, found: &[Variant], tokens: &[usize]) -> Vec<svg::Series> {
    let mut out = Vec::new();
    for (b, &t) in tokens.iter().enumerate() {
        for (phase, dashed) in [("dispatch", false), ("combine", true)] {
            out.push(svg::Series {
                label: format!("{spec} T={t} {phase}"),
                points: found
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let p = v.times.get(b).copied().flatten()?;
                        let y = if phase == "dispatch" {
                            p.dispatch
                        } else {
                            p.combine
                        };
                        y.is_finite().then_some(((i + 1) as f64, y))
                    })
                    .collect(),
                dashed,
            });
        }
    }
    out
}
