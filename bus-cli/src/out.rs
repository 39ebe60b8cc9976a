//! Everything the command writes: tables, JSON, durations and times for people, and the
//! failure type that decides the exit status. The one module that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Why a command failed, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// The command could not do its work (exit 1).
    Failed(String),
    /// The command was used wrongly: an argument clap could not check (exit 2).
    Usage(String),
}

impl Failure {
    /// The exit status.
    pub fn code(&self) -> ExitCode {
        match self {
            Failure::Failed(_) => ExitCode::from(1),
            Failure::Usage(_) => ExitCode::from(2),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Failed(m) | Failure::Usage(m) => f.write_str(m),
        }
    }
}

impl From<bus::Error> for Failure {
    fn from(e: bus::Error) -> Self {
        Failure::Failed(e.to_string())
    }
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// Writes a line to stdout; a closed pipe (`bus tap … | head`) ends the command quietly.
pub fn line(text: impl fmt::Display) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// A JSON document on one line of stdout.
pub fn json(value: &Value) {
    line(value);
}

/// A note for the person at the terminal, on stderr (never part of the machine output).
pub fn note(text: impl fmt::Display) {
    eprintln!("{text}");
}

/// The failure, on stderr.
pub fn failure(f: &Failure) {
    eprintln!("bus: {f}");
}

/// A table with a header row; every column but the last is padded.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it.
    pub fn print(&self) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut text = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    let pad = widths[c] - cell.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line(text.trim_end());
        }
    }
}

/// Labelled lines, `label  value`, labels padded to one width.
pub fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (label, value) in rows {
        line(format!("{label:<width$}  {value}"));
    }
}

/// At most `max` characters, with `…` when cut; line breaks shown as spaces.
pub fn cut(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut s: String = flat.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// A duration for people: `850ms`, `4.2s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86400, s % 86400 / 3600)
    }
}

/// How long ago `t` was, for people (`12s ago`; `in the future` for a clock ahead of ours).
pub fn ago(t: SystemTime) -> String {
    match SystemTime::now().duration_since(t) {
        Ok(d) => format!("{} ago", duration(d)),
        Err(_) => "just now".into(),
    }
}

/// How far `t` is from now: `in 3.2s`, or `due` once it has passed.
pub fn until(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => format!("in {}", duration(d)),
        Err(_) => "due".into(),
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `t` as UTC, `2025-03-01T12:00:00.123Z`.
pub fn utc(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The time of day of `t`, UTC, `12:00:00.123`.
pub fn clock(t: SystemTime) -> String {
    utc(t)[11..23].to_string()
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Bytes for people: `812 B`, `48.0 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_for_people() {
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_millis(1_709_294_400_123)),
            "2024-03-01T12:00:00.123Z"
        );
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            clock(UNIX_EPOCH + Duration::from_millis(951_827_696_789)),
            "12:34:56.789"
        );
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(4_250)), "4.2s");
        assert_eq!(duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(duration(Duration::from_secs(7_500)), "2h05m");
        assert_eq!(duration(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(49_152), "48.0 KiB");
        assert_eq!(cut("a\nbcdef", 4), "a b…");
    }
}
