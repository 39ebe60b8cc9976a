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
    /// The bus's p99 must be `<= x` (in the scenario's unit).
    P99AtMost(f64),
    /// `ratio >= r` and the bus's p99 `<= x`.
    RatioAndP99(f64, f64),
    /// No bar: the row informs.
    Info,
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
    /// The largest latency of the bus over all rounds (latency scenarios).
    pub bus_max: Option<f64>,
    /// The largest latency of the baseline over all rounds (latency scenarios).
    pub baseline_max: Option<f64>,
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

    /// Whether the target is met (`None` when not measured, or when there is no bar).
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(x) => self.ratio().map(|r| r >= x),
            Target::BusAtMost(x) => self.bus.map(|b| b <= x),
            Target::P99AtMost(x) => self.bus_p99.map(|p| p <= x),
            Target::RatioAndP99(r, x) => Some(self.ratio()? >= r && self.bus_p99? <= x),
            Target::Info => None,
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
            ("ratio", ratio_num(self.ratio())),
        ];
        if self.bus_p99.is_some() || self.baseline_p99.is_some() {
            fields.push(("bus_p99", num(self.bus_p99)));
            fields.push(("baseline_p99", num(self.baseline_p99)));
            fields.push((
                "ratio_p99",
                ratio_num(match (self.bus_p99, self.baseline_p99) {
                    (Some(b), Some(base)) => Some(base / b),
                    _ => None,
                }),
            ));
        }
        if self.bus_max.is_some() || self.baseline_max.is_some() {
            fields.push(("bus_max", num(self.bus_max)));
            fields.push(("baseline_max", num(self.baseline_max)));
        }
        if self.baseline_old.is_some() {
            fields.push(("baseline_old", num(self.baseline_old)));
            fields.push(("ratio_old", ratio_num(self.ratio_old())));
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
            Target::P99AtMost(x) => format!("p99 <= {x:.0} {}", self.unit),
            Target::RatioAndP99(r, x) => format!("ratio >= {r:.2}, p99 <= {x:.0} {}", self.unit),
            Target::Info => "(info)".into(),
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

/// A ratio with three decimals (`num` keeps two, which made 0.908 read 0.91).
fn ratio_num(x: Option<f64>) -> Value {
    match x {
        Some(v) if v.is_finite() => json!(round(v, 3)),
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
            match (l.met(), l.target, &l.error) {
                (Some(true), _, _) => "yes".into(),
                (Some(false), _, _) => "NO".into(),
                (None, Target::Info, None) => "-".into(),
                (None, _, _) => "error".into(),
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
        if l.bus_max.is_some() || l.baseline_max.is_some() {
            let r = match (l.bus_max, l.baseline_max) {
                (Some(b), Some(base)) => format!("{:.3}", base / b),
                _ => "-".into(),
            };
            rows.push([
                "  (max of the same)".into(),
                fmt_num(l.bus_max),
                fmt_num(l.baseline_max),
                l.unit.to_string(),
                r,
                String::new(),
                "(info)".into(),
                String::new(),
            ]);
        }
    }
    let mut out = render(&rows, &[1, 2, 4, 5]);
    for l in lines {
        if let Some(e) = &l.error {
            out.push_str(&format!("{}: ERROR {e}\n", l.scenario));
        }
    }
    out
}

/// One scenario's figures as read back from a report's JSON line (`--compare`).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// The scenario name (rows are matched by it).
    pub scenario: String,
    /// The unit of `bus` and `baseline`.
    pub unit: String,
    /// The bus figure.
    pub bus: Option<f64>,
    /// The baseline figure.
    pub baseline: Option<f64>,
    /// SDK relative to the baseline, higher = better.
    pub ratio: Option<f64>,
    /// p99 of the bus (latency scenarios).
    pub bus_p99: Option<f64>,
    /// The ratio of the p99s (latency scenarios), higher = better.
    pub ratio_p99: Option<f64>,
}

impl Figures {
    /// The figures of a line of this run.
    pub fn of(line: &Line) -> Figures {
        Figures {
            scenario: line.scenario.to_string(),
            unit: line.unit.to_string(),
            bus: line.bus,
            baseline: line.baseline,
            ratio: line.ratio(),
            bus_p99: line.bus_p99,
            ratio_p99: match (line.bus_p99, line.baseline_p99) {
                (Some(b), Some(base)) => Some(base / b),
                _ => None,
            },
        }
    }
}

/// The scenario lines of a saved report: every line that is a JSON object with a `scenario`
/// (a whole saved stdout works: the table and anything else is skipped). A scenario that
/// appears twice keeps its last line.
pub fn parse_jsonl(text: &str) -> Vec<Figures> {
    let mut out: Vec<Figures> = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        let Some(scenario) = v.get("scenario").and_then(Value::as_str) else {
            continue;
        };
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let fig = Figures {
            scenario: scenario.to_string(),
            unit: v
                .get("unit")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            bus: f("bus"),
            baseline: f("baseline"),
            ratio: f("ratio"),
            bus_p99: f("bus_p99"),
            ratio_p99: f("ratio_p99"),
        };
        out.retain(|o| o.scenario != fig.scenario);
        out.push(fig);
    }
    out
}

/// Per scenario, the median of each figure over the runs that have it (scenarios in the order
/// first seen): several alternated runs become one row each.
pub fn medians(runs: &[Vec<Figures>]) -> Vec<Figures> {
    let mut names: Vec<(&str, &str)> = Vec::new();
    for f in runs.iter().flatten() {
        if !names.iter().any(|(n, _)| *n == f.scenario) {
            names.push((&f.scenario, &f.unit));
        }
    }
    names
        .into_iter()
        .map(|(name, unit)| {
            let of = |get: fn(&Figures) -> Option<f64>| {
                let v: Vec<f64> = runs
                    .iter()
                    .flatten()
                    .filter(|f| f.scenario == name)
                    .filter_map(get)
                    .collect();
                (!v.is_empty()).then(|| crate::runner::median(&v))
            };
            Figures {
                scenario: name.to_string(),
                unit: unit.to_string(),
                bus: of(|f| f.bus),
                baseline: of(|f| f.baseline),
                ratio: of(|f| f.ratio),
                bus_p99: of(|f| f.bus_p99),
                ratio_p99: of(|f| f.ratio_p99),
            }
        })
        .collect()
}

/// The before/after table of `--compare`: per scenario (matched by name; one missing on a side
/// shows `-`), the ratio and the bus figure before and after and after/before of each, and for
/// latency rows the same of the p99. `after/before` of a ratio above 1 is better; of a bus
/// figure it is better above 1 for msg/s and below 1 for µs and MiB.
pub fn compare_table(before: &[Figures], after: &[Figures]) -> String {
    let mut names: Vec<&str> = after.iter().map(|f| f.scenario.as_str()).collect();
    for f in before {
        if !names.contains(&f.scenario.as_str()) {
            names.push(&f.scenario);
        }
    }
    let ratio_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    };
    let ratio_text = |x: Option<f64>| x.map_or("-".into(), |r| format!("{r:.3}"));
    let mut rows: Vec<[String; 8]> = vec![[
        "scenario".into(),
        "ratio before".into(),
        "ratio after".into(),
        "after/before".into(),
        "bus before".into(),
        "bus after".into(),
        "after/before".into(),
        "unit".into(),
    ]];
    for name in names {
        let b = before.iter().find(|f| f.scenario == name);
        let a = after.iter().find(|f| f.scenario == name);
        let get = |f: Option<&Figures>, g: fn(&Figures) -> Option<f64>| f.and_then(g);
        let unit = a.or(b).map_or("", |f| f.unit.as_str()).to_string();
        rows.push([
            name.to_string(),
            ratio_text(get(b, |f| f.ratio)),
            ratio_text(get(a, |f| f.ratio)),
            ratio_of(get(a, |f| f.ratio), get(b, |f| f.ratio)),
            fmt_num(get(b, |f| f.bus)),
            fmt_num(get(a, |f| f.bus)),
            ratio_of(get(a, |f| f.bus), get(b, |f| f.bus)),
            unit.clone(),
        ]);
        if get(a, |f| f.bus_p99).is_some() || get(b, |f| f.bus_p99).is_some() {
            rows.push([
                "  (p99)".into(),
                ratio_text(get(b, |f| f.ratio_p99)),
                ratio_text(get(a, |f| f.ratio_p99)),
                ratio_of(get(a, |f| f.ratio_p99), get(b, |f| f.ratio_p99)),
                fmt_num(get(b, |f| f.bus_p99)),
                fmt_num(get(a, |f| f.bus_p99)),
                ratio_of(get(a, |f| f.bus_p99), get(b, |f| f.bus_p99)),
                unit,
            ]);
        }
    }
    render(&rows, &[1, 2, 3, 4, 5, 6])
}

/// Rows as aligned columns (the first row a header, underlined); `right` are the columns
/// aligned right (numbers).
fn render<const N: usize>(rows: &[[String; N]], right: &[usize]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
            if right.contains(&j) {
                out.push_str(&format!("{cell:>w$}"));
            } else {
                out.push_str(&format!("{cell:<w$}"));
            }
            if j + 1 < N {
                out.push_str("  ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (N - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
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
            bus_max: None,
            baseline_max: None,
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
        // Three decimals, as the README's contract shows them.
        let v: Value = serde_json::from_str(&line(Better::Higher, 90.8, 100.0).to_json()).unwrap();
        assert_eq!(v["ratio"], json!(0.908));
    }

    #[test]
    fn compare_matches_rows_by_name_and_takes_medians() {
        let run = |r: f64| {
            format!(
                "progress\n{{\"scenario\": \"a\", \"bus\": {}, \"baseline\": 100, \"unit\": \"msg/s\", \"ratio\": {r}}}\nscenario  bus\n",
                r * 100.0
            )
        };
        let before = medians(&[
            parse_jsonl(&run(0.5)),
            parse_jsonl(&run(0.7)),
            parse_jsonl(&run(0.6)),
        ]);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].ratio, Some(0.6));
        let mut after = parse_jsonl(&run(0.9));
        after.push(Figures::of(&line(Better::Lower, 200.0, 100.0)));
        let table = compare_table(&before, &after);
        let a = table.lines().find(|l| l.starts_with("a ")).unwrap();
        assert!(
            a.contains("0.600") && a.contains("0.900") && a.contains("1.500"),
            "{table}"
        );
        // Only after: shown with dashes on the before side.
        let x = table.lines().find(|l| l.starts_with("x ")).unwrap();
        assert!(x.contains(" - "), "{table}");
    }
}
