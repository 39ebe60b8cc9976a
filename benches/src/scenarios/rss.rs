//! `outbox_1m_rss_mib`: peak RSS of a process that queues 1,000,000 messages in the outbox while
//! NATS is unreachable.
//!
//! The queueing runs in a child process (this binary re-executed with the hidden subcommand
//! [`CHILD_COMMAND`]), so the peak (`VmHWM`) is the scenario's own and not that of the earlier
//! scenarios in the parent.

use std::process::Command;

use serde_json::Value;

use crate::runner::{fail, BenchResult};
use crate::sdk;
use crate::server::free_port;

/// The hidden subcommand that runs the child.
pub const CHILD_COMMAND: &str = "__outbox-rss-child";

/// What the child measured, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    /// `VmRSS` after the bus is connected, before queueing.
    pub before: f64,
    /// `VmHWM` after queueing: the peak over the process's life.
    pub peak: f64,
}

/// Runs the child and reads its one-line JSON answer.
pub fn measure(count: usize, window: usize) -> BenchResult<Rss> {
    let dir = tempfile::tempdir()?;
    let dir = dir
        .path()
        .to_str()
        .ok_or_else(|| fail("non-UTF-8 temp dir"))?;
    let v = child_json(&[CHILD_COMMAND, &count.to_string(), &window.to_string(), dir])?;
    let get = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| fail(format!("the RSS child's answer lacks {k}: {v}")))
    };
    Ok(Rss {
        before: get("before_mib")?,
        peak: get("peak_mib")?,
    })
}

/// Runs this binary with `args` (a hidden child subcommand first) and parses the last line of
/// its stdout that is a JSON object: a measurement that needs a process of its own.
pub fn child_json(args: &[&str]) -> BenchResult<Value> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    if !out.status.success() {
        return Err(fail(format!(
            "the {} child failed ({}): {}",
            args[0],
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| fail(format!("the {} child printed no result: {stdout}", args[0])))?;
    Ok(serde_json::from_str(line)?)
}

/// The child: connect a bus with an outbox to a port nobody listens on, read `VmRSS`, queue
/// `count` messages, read `VmHWM`, print both as JSON.
pub fn child_main(args: &[String]) -> BenchResult<()> {
    let [count, window, dir] = args else {
        return Err(fail(format!(
            "usage: {CHILD_COMMAND} <count> <window> <dir>"
        )));
    };
    let count: usize = count.parse()?;
    let window: usize = window.parse()?;
    let url = format!("nats://127.0.0.1:{}", free_port()?);
    let path = std::path::Path::new(dir).join("outbox.sqlite3");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (before, queued) =
        rt.block_on(sdk::queue_while_down(&url, &path, count, window, || {
            proc_status_mib("VmRSS")
        }))?;
    let peak = proc_status_mib("VmHWM")?;
    let line = serde_json::json!({
        "before_mib": before,
        "peak_mib": peak,
        "queued": queued,
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{line}");
    }
    Ok(())
}

/// A `kB` field of `/proc/self/status`, in MiB.
pub fn proc_status_mib(field: &str) -> BenchResult<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| fail(format!("no {field} in /proc/self/status")))?;
    Ok(kb / 1024.0)
}
