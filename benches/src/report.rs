//! The report: one JSON object per scenario per line, then a human-readable table.

use serde_json::{json, Value};

/// Which way a figure is better, which decides how `ratio` is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput: ratio = bus / baseline.
    Higher,
    /// Latency, memory: ratio = baseline / bus.
    Lower,
}

/// The product's bar for a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// `ratio >= x`.
    RatioAtLeast(f64),
    /// The bus figure itself must be `<= x` (in the scenario's unit).
    BusAtMost(f64),
}

/// One scenario's result (or its failure).
#[derive(Debug, Clone)]
pub struct Line {
    /// Scenario name (the contract).
    pub scenario: &'static str,
    /// Unit of `bus` and `baseline`.
    pub unit: &'static str,
    /// Which way is better.
    pub better: Better,
    /// The bar.
    pub target: Target,
    /// Median bus figure.
    pub bus: Option<f64>,
    /// Median baseline figure.
    pub baseline: Option<f64>,
    /// p99 of the bus (latency scenarios).
    pub bus_p99: Option<f64>,
    /// p99 of the baseline (latency scenarios).
    pub baseline_p99: Option<f64>,
    /// Median figure of the previous baseline, where the scenario kept one beside a tightened
    /// baseline (same run, same rounds).
    pub baseline_old: Option<f64>,
    /// Why the scenario could not be measured.
    pub error: Option<String>,
}

impl Line {
    /// SDK relative to the baseline, higher = better.
    pub fn ratio(&self) -> Option<f64> {
        self.ratio_to(self.baseline?)
    }

    /// The ratio against the previous baseline, where there is one.
    pub fn ratio_old(&self) -> Option<f64> {
        self.ratio_to(self.baseline_old?)
    }

    fn ratio_to(&self, base: f64) -> Option<f64> {
        let bus = self.bus?;
        let r = match self.better {
            Better::Higher => bus / base,
            Better::Lower => base / bus,
        };
        r.is_finite().then_some(r)
    }

    /// Whether the target is met (`None` when not measured).
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(x) => self.ratio().map(|r| r >= x),
            Target::BusAtMost(x) => self.bus.map(|b| b <= x),
        }
    }

    /// The JSON object: the five contract keys first, in the contract's order, then the p99s
    /// and the error where there are any.
    pub fn to_json(&self) -> String {
        let mut fields: Vec<(&str, Value)> = vec![
            ("scenario", json!(self.scenario)),
            ("bus", num(self.bus)),
            ("baseline", num(self.baseline)),
            ("unit", json!(self.unit)),
            ("ratio", num(self.ratio().map(|r| round(r, 3)))),
        ];
        if self.bus_p99.is_some() || self.baseline_p99.is_some() {
            fields.push(("bus_p99", num(self.bus_p99)));
            fields.push(("baseline_p99", num(self.baseline_p99)));
            fields.push((
                "ratio_p99",
                num(match (self.bus_p99, self.baseline_p99) {
                    (Some(b), Some(base)) => Some(round(base / b, 3)),
                    _ => None,
                }),
            ));
        }
        if self.baseline_old.is_some() {
            fields.push(("baseline_old", num(self.baseline_old)));
            fields.push(("ratio_old", num(self.ratio_old().map(|r| round(r, 3)))));
        }
        if let Some(e) = &self.error {
            fields.push(("error", json!(e)));
        }
        // serde_json's map sorts keys; writing the object by hand keeps the contract's order.
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}: {v}", json!(k)))
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(x) => format!("ratio >= {x:.2}"),
            Target::BusAtMost(x) => format!("bus <= {x:.0} {}", self.unit),
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn num(x: Option<f64>) -> Value {
    match x {
        Some(v) if v.is_finite() => {
            // Two decimals are plenty for msg/s, µs and MiB; keeps the lines short.
            json!(round(v, 2))
        }
        _ => Value::Null,
    }
}

fn fmt_num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() && v >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "-".into(),
    }
}

/// The human-readable table, with the p99 rows and any errors under it.
pub fn table(lines: &[Line]) -> String {
    let mut rows: Vec<[String; 8]> = vec![[
        "scenario".to_string(),
        "bus".into(),
        "baseline".into(),
        "unit".into(),
        "ratio".into(),
        "old ratio".into(),
        "target".into(),
        "met".into(),
    ]];
    for l in lines {
        rows.push([
            l.scenario.to_string(),
            fmt_num(l.bus),
            fmt_num(l.baseline),
            l.unit.to_string(),
            l.ratio().map_or("-".into(), |r| format!("{r:.3}")),
            l.ratio_old().map_or("-".into(), |r| format!("{r:.3}")),
            l.target_text(),
            match l.met() {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "error".into(),
            },
        ]);
        if l.bus_p99.is_some() || l.baseline_p99.is_some() {
            let r = match (l.bus_p99, l.baseline_p99) {
                (Some(b), Some(base)) => format!("{:.3}", base / b),
                _ => "-".into(),
            };
            rows.push([
                "  (p99 of the same)".into(),
                fmt_num(l.bus_p99),
                fmt_num(l.baseline_p99),
                l.unit.to_string(),
                r,
                String::new(),
                "(info)".into(),
                String::new(),
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if matches!(j, 1 | 2 | 4 | 5) {
                out.push_str(&format!("{cell:>w$}"));
            } else {
                out.push_str(&format!("{cell:<w$}"));
            }
            if j < 7 {
                out.push_str("  ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * 7;
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    for l in lines {
        if let Some(e) = &l.error {
            out.push_str(&format!("{}: ERROR {e}\n", l.scenario));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(better: Better, bus: f64, base: f64) -> Line {
        Line {
            scenario: "x",
            unit: "msg/s",
            better,
            target: Target::RatioAtLeast(0.9),
            bus: Some(bus),
            baseline: Some(base),
            bus_p99: None,
            baseline_p99: None,
            baseline_old: None,
            error: None,
        }
    }

    #[test]
    fn ratio_is_higher_is_better_both_ways() {
        assert_eq!(line(Better::Higher, 90.0, 100.0).ratio(), Some(0.9));
        assert_eq!(line(Better::Lower, 200.0, 100.0).ratio(), Some(0.5));
        assert_eq!(line(Better::Higher, 80.0, 100.0).met(), Some(false));
    }

    #[test]
    fn json_has_the_contract_keys() {
        let v: Value = serde_json::from_str(&line(Better::Higher, 90.0, 100.0).to_json()).unwrap();
        for k in ["scenario", "bus", "baseline", "unit", "ratio"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["ratio"], json!(0.9));
        assert!(v.get("ratio_old").is_none());
        let mut l = line(Better::Higher, 90.0, 100.0);
        l.baseline_old = Some(60.0);
        let v: Value = serde_json::from_str(&l.to_json()).unwrap();
        assert_eq!(v["ratio_old"], json!(1.5));
    }
}
