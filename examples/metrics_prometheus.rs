//! The bus's metrics in the Prometheus text format, on `GET /metrics`.
//!
//! A local bus publishes, handles (one message fails and is dead-lettered) and answers requests,
//! with `metrics-exporter-prometheus` installed as the `metrics` recorder *before* the bus is
//! made (a bus resolves its metric handles when it starts). The exporter is used without its
//! default features (no hyper, no TLS): this example serves the rendered text itself.
//!
//! ```text
//! cargo run --example metrics_prometheus            # prints the metrics once, then exits
//! cargo run --example metrics_prometheus -- --serve 127.0.0.1:9898   # curl it, Ctrl-C to stop
//! ```

#![allow(clippy::print_stdout)] // an example talks to its user on stdout

use std::time::Duration;

use bus::{Bus, HandlerOptions, Message, RetryPolicy};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Text a plugin sends out on a channel.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("plugin.outbound.<channel>.<instance>")]
pub struct Outbound {
    /// Fills `<channel>`.
    pub channel: String,
    /// Fills `<instance>`.
    pub instance: String,
    /// The text to send.
    pub text: String,
}

/// A task for an agent, answered with whether it was accepted.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(bool)]
pub struct Delegate {
    /// Fills `<agent>`.
    pub agent: String,
    /// What to do.
    pub task: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First the recorder, then the bus.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])?
        .install_recorder()?;
    let bus = Bus::local().await?;

    let sender = bus
        .handle_with(
            Outbound::filter().channel("slack"),
            HandlerOptions::named("slack-sender").retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .base(Duration::from_millis(5)),
            ),
            |msg| async move {
                if msg.text.is_empty() {
                    return Err("empty text");
                }
                Ok(())
            },
        )
        .await?;
    let planner = Delegate::serve(&bus, Delegate::filter(), |req| async move {
        Ok::<_, bus::Error>(!req.task.is_empty())
    })
    .await?;

    for text in ["hello", "", "bye"] {
        Outbound {
            channel: "slack".into(),
            instance: "a1".into(),
            text: text.into(),
        }
        .publish(&bus)
        .await?;
    }
    for task in ["summarise", "plan"] {
        Delegate {
            agent: "planner".into(),
            task: task.into(),
        }
        .request(&bus)
        .await?;
    }
    // Let the failed message run out of attempts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--serve"), Some(addr)) => serve(&addr, prometheus).await?,
        _ => print!("{}", prometheus.render()),
    }
    sender.stop().await;
    planner.stop().await;
    Ok(())
}

/// A minimal HTTP server: every request gets the current metrics.
async fn serve(addr: &str, prometheus: PrometheusHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "metrics on http://{}/metrics (Ctrl-C to stop)",
        listener.local_addr()?
    );
    loop {
        let (mut conn, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let body = prometheus.render();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
