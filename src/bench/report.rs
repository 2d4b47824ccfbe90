//! Turns result lines into `BENCHMARKS.md`: one table per scenario, targets side by side,
//! and for broker-path scenarios the ratio of Cradle to Mosquitto.

use std::fmt::Write;

use super::BenchResult;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// Renders results as Markdown. `header` is prepended verbatim (machine, command, date).
pub fn markdown(results: &[BenchResult], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let mut scenarios: Vec<&str> = Vec::new();
    for r in results {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for scenario in scenarios {
        let rows: Vec<&BenchResult> = results.iter().filter(|r| r.scenario == scenario).collect();
        let _ = writeln!(out, "\n### {scenario}\n");
        let _ = writeln!(
            out,
            "| target | parameters | rate | done / expected | p50 ms | p99 ms | p99.9 ms | CPU s | peak RSS MiB | note |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                r.params,
                r.rate,
                r.unit,
                r.count,
                r.expected,
                opt(r.p50_ms, 2),
                opt(r.p99_ms, 2),
                opt(r.p999_ms, 2),
                opt(r.cpu_seconds, 2),
                opt(r.peak_rss_mib, 1),
                r.note
            );
        }
        ratios(&mut out, &rows);
    }
    out
}

/// Side-by-side ratios where the same parameters ran on Cradle and on Mosquitto: the k-th
/// Cradle row against the k-th Mosquitto row (rounds alternate between the two), and the
/// median of the rounds when there are several.
fn ratios(out: &mut String, rows: &[&BenchResult]) {
    let mut params: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.target == "cradle") {
        if !params.contains(&r.params.as_str()) {
            params.push(&r.params);
        }
    }
    let mut lines = Vec::new();
    for p in params {
        let of = |target: &str| -> Vec<&BenchResult> {
            rows.iter()
                .copied()
                .filter(|r| r.target == target && r.params == p)
                .collect()
        };
        let (cradle, mosquitto) = (of("cradle"), of("mosquitto"));
        let mut each: Vec<f64> = Vec::new();
        for (c, m) in cradle.iter().zip(&mosquitto).filter(|(_, m)| m.rate > 0.0) {
            each.push(c.rate / m.rate);
            lines.push(format!(
                "- {p}: Cradle {:.0} vs Mosquitto {:.0} {} = **{:.2}×**",
                c.rate,
                m.rate,
                c.unit,
                c.rate / m.rate
            ));
        }
        if each.len() > 1 {
            let rounds: Vec<String> = each.iter().map(|r| format!("{r:.2}×")).collect();
            each.sort_by(f64::total_cmp);
            lines.push(format!(
                "- {p}: median of {} rounds **{:.2}×** ({})",
                each.len(),
                each[each.len() / 2],
                rounds.join(", ")
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(out, "\n{}", lines.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_rows_get_a_ratio() {
        let mut c = BenchResult::new("broker-qos0", "cradle", "10 → 1".into(), "msg/s");
        c.rate = 300.0;
        let mut m = BenchResult::new("broker-qos0", "mosquitto", "10 → 1".into(), "msg/s");
        m.rate = 100.0;
        let md = markdown(&[c, m], "# Benchmarks");
        assert!(md.contains("### broker-qos0"));
        assert!(md.contains("**3.00×**"), "{md}");
    }

    #[test]
    fn alternating_rounds_pair_in_order_and_report_their_median() {
        let row = |target: &str, rate: f64| {
            let mut r = BenchResult::new("broker-qos1", target, "10 → 1".into(), "msg/s");
            r.rate = rate;
            r
        };
        let rows = [
            row("cradle", 400.0),
            row("mosquitto", 100.0),
            row("cradle", 300.0),
            row("mosquitto", 200.0),
            row("cradle", 500.0),
            row("mosquitto", 100.0),
        ];
        let md = markdown(&rows, "# Benchmarks");
        assert!(
            md.contains("= **4.00×**") && md.contains("= **1.50×**"),
            "{md}"
        );
        assert!(
            md.contains("median of 3 rounds **4.00×** (4.00×, 1.50×, 5.00×)"),
            "{md}"
        );
    }
}
