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
        // Side-by-side ratio where the same parameters ran on Cradle and on Mosquitto.
        let mut ratios = Vec::new();
        for c in rows.iter().filter(|r| r.target == "cradle") {
            if let Some(m) = rows
                .iter()
                .find(|r| r.target == "mosquitto" && r.params == c.params)
            {
                if m.rate > 0.0 {
                    ratios.push(format!(
                        "- {}: Cradle {:.0} vs Mosquitto {:.0} {} = **{:.2}×**",
                        c.params,
                        c.rate,
                        m.rate,
                        c.unit,
                        c.rate / m.rate
                    ));
                }
            }
        }
        if !ratios.is_empty() {
            let _ = writeln!(out, "\n{}", ratios.join("\n"));
        }
    }
    out
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
}
