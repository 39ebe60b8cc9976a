//! The bus side of every scenario, written with the typed API as a user would.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, ConnectionState, ServeHandle, Subscription};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::msgs::{self, Delegate, Outbound, RouteReply, CHANNEL, INSTANCE, WARM};
use crate::runner::{fail, rate, warm_up, within, BenchResult, SLACK, WAIT};
use crate::server::Server;

/// Counts `n` measured messages on a typed subscription and returns when the last arrived.
/// Any `Err` item (a slow-consumer drop, an undecodable payload) fails the round: the bus side
/// must lose nothing either.
fn spawn_typed_counter(
    mut sub: Subscription<Outbound>,
    n: usize,
    warm: Arc<Notify>,
) -> JoinHandle<BenchResult<Instant>> {
    tokio::spawn(async move {
        let mut count = 0usize;
        while let Some(item) = sub.next().await {
            let env = item?;
            if env.instance == WARM {
                warm.notify_one();
                continue;
            }
            count += 1;
            if count == n {
                return Ok(Instant::now());
            }
        }
        Err(fail(format!(
            "typed subscription ended after {count} of {n}"
        )))
    })
}

/// Publishes probes until the subscriber saw one, so its subscription is live at the server.
async fn probe(bus: &Bus, warm: &Notify) -> BenchResult<()> {
    let probe = msgs::outbound(WARM);
    for _ in 0..200 {
        probe.publish(bus).await?;
        if tokio::time::timeout(Duration::from_millis(50), warm.notified())
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(fail("the typed subscription never saw a probe"))
}

/// Subscribes `subscriber` to the measured channel, counts there, and probes from `publisher`
/// until the subscription is live at the server.
async fn start_counter(
    publisher: &Bus,
    subscriber: &Bus,
    n: usize,
) -> BenchResult<JoinHandle<BenchResult<Instant>>> {
    let sub = Outbound::subscribe(subscriber, Outbound::filter().channel(CHANNEL)).await?;
    let warm = Arc::new(Notify::new());
    let counter = spawn_typed_counter(sub, n, warm.clone());
    probe(publisher, &warm).await?;
    Ok(counter)
}

/// A subscribing bus on its own connection (outbox off, a buffer that holds the whole round),
/// its counter live for `publisher`'s messages. The bus is returned so it outlives the round.
async fn typed_subscriber(
    url: &str,
    n: usize,
    publisher: &Bus,
) -> BenchResult<(Bus, JoinHandle<BenchResult<Instant>>)> {
    let subscriber = Bus::builder()
        .nats([url])
        .no_outbox()
        .subscription_capacity(n + SLACK)
        .connect()
        .await?;
    let counter = start_counter(publisher, &subscriber, n).await?;
    Ok((subscriber, counter))
}

/// Publishes `n` copies of `msg` with up to `window` publishes in flight.
pub async fn publish_windowed(
    bus: &Bus,
    msg: &Outbound,
    n: usize,
    window: usize,
) -> BenchResult<()> {
    let mut in_flight = futures::stream::iter(0..n)
        .map(|_| msg.publish(bus))
        .buffer_unordered(window);
    while let Some(r) = in_flight.next().await {
        r?;
    }
    Ok(())
}

/// `nats_pubsub_typed`: a publishing bus and a subscribing bus (two connections, as the
/// baseline), outbox off, publishes awaited one after the other.
pub async fn pubsub_typed(url: &str, n: usize) -> BenchResult<f64> {
    let publisher = Bus::builder().nats([url]).no_outbox().connect().await?;
    let (_subscriber, counter) = typed_subscriber(url, n, &publisher).await?;

    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(&publisher).await?;
    }
    let end = within(WAIT, "the typed subscriber", counter).await???;
    Ok(rate(n, start, end))
}

/// `nats_fanout_10`: a publishing bus and `subscribers` subscribing buses (one connection each,
/// as the baseline), outbox off, publishes awaited one after the other; the round ends when
/// every subscriber has all `n`.
pub async fn fanout_typed(url: &str, n: usize, subscribers: usize) -> BenchResult<f64> {
    let publisher = Bus::builder().nats([url]).no_outbox().connect().await?;
    let mut buses = Vec::with_capacity(subscribers);
    let mut counters = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (bus, counter) = typed_subscriber(url, n, &publisher).await?;
        buses.push(bus);
        counters.push(counter);
    }
    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(&publisher).await?;
    }
    let mut end = start;
    for counter in counters {
        end = end.max(within(WAIT, "a typed fan-out subscriber", counter).await???);
    }
    Ok(rate(n, start, end))
}

/// `nats_pubsub_durable`: as [`pubsub_typed`] with the outbox on (a fresh file per round) and
/// `window` publishes in flight, which is how a producer lets group commit batch them.
/// With `wire` [`WireHeaders::NoId`](bus::WireHeaders::NoId) (`diag_durable_noid`) the
/// messages carry no id header at all.
pub async fn pubsub_durable(
    url: &str,
    n: usize,
    window: usize,
    wire: bus::WireHeaders,
) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let publisher = Bus::builder()
        .nats([url])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .wire_headers(wire)
        .connect()
        .await?;
    let (_subscriber, counter) = typed_subscriber(url, n, &publisher).await?;

    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    publish_windowed(&publisher, &msg, n, window).await?;
    let end = within(WAIT, "the typed subscriber", counter).await???;
    publisher.flush().await?;
    Ok(rate(n, start, end))
}

/// `nats_request_p50`: a serving bus and a requesting bus (two connections, as the baseline),
/// sequential typed requests.
pub struct BusRequester {
    client: Bus,
    req: Delegate,
    serve: Option<ServeHandle>,
    _server_bus: Bus,
}

impl BusRequester {
    /// Starts the typed responder, connects the requester and warms both up.
    pub async fn start(url: &str) -> BenchResult<BusRequester> {
        let server_bus = Bus::builder().nats([url]).no_outbox().connect().await?;
        let serve = Delegate::serve(&server_bus, Delegate::filter(), |_req| async {
            Ok::<_, Infallible>(RouteReply { accepted: true })
        })
        .await?;
        let r = BusRequester {
            client: Bus::builder().nats([url]).no_outbox().connect().await?,
            req: msgs::delegate(),
            serve: Some(serve),
            _server_bus: server_bus,
        };
        let requester = &r;
        warm_up(|_| async move { requester.req.request(&requester.client).await.is_ok() }).await;
        Ok(r)
    }

    /// One timed request.
    pub async fn once(&self) -> BenchResult<Duration> {
        let t = Instant::now();
        let reply = self.req.request(&self.client).await?;
        let took = t.elapsed();
        if !reply.accepted {
            return Err(fail("typed reply says not accepted"));
        }
        Ok(took)
    }
}

impl Drop for BusRequester {
    fn drop(&mut self) {
        if let Some(s) = self.serve.take() {
            tokio::spawn(s.stop());
        }
    }
}

/// `local_pubsub_typed` (`subs` = 1) and `local_10k_subs`: a local bus with `subs - 1`
/// subscriptions on other channels (`plugin.outbound.c<i>.*`, never matched) and one on the
/// measured channel; `n` publishes, end to end at that one subscriber.
pub async fn local_typed(n: usize, subs: usize) -> BenchResult<f64> {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(n + SLACK)
        .connect()
        .await?;
    let mut others = Vec::with_capacity(subs.saturating_sub(1));
    for i in 0..subs.saturating_sub(1) {
        others.push(Outbound::subscribe(&bus, Outbound::filter().channel(format!("c{i}"))).await?);
    }
    let sub = Outbound::subscribe(&bus, Outbound::filter().channel(CHANNEL)).await?;
    let counter = spawn_typed_counter(sub, n, Arc::new(Notify::new()));

    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(&bus).await?;
    }
    let end = within(WAIT, "the local subscriber", counter).await???;
    drop(others);
    Ok(rate(n, start, end))
}

/// One round of `n` publishes on an existing local bus, end to end at a fresh subscription on
/// the measured channel (for `--scaling`, where the bus already holds other subscriptions).
pub async fn local_round(bus: &Bus, n: usize) -> BenchResult<f64> {
    let sub = Outbound::subscribe(bus, Outbound::filter().channel(CHANNEL)).await?;
    let counter = spawn_typed_counter(sub, n, Arc::new(Notify::new()));
    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(bus).await?;
    }
    let end = within(WAIT, "the local subscriber", counter).await???;
    Ok(rate(n, start, end))
}

/// `drain_after_outage`: queue `n` messages while the server is down, restart it, and time the
/// drain from reconnect until a subscriber on the same bus has them all.
pub async fn drain(server: &mut Server, n: usize, window: usize) -> BenchResult<f64> {
    let url = server.client_url();
    let dir = tempfile::tempdir()?;
    let bus = Bus::builder()
        .nats([url.as_str()])
        .outbox_path(dir.path().join("outbox.sqlite3"))
        .subscription_capacity(n + SLACK)
        .reconnect_delay(Duration::from_millis(100))
        .connect()
        .await?;
    let counter = start_counter(&bus, &bus, n).await?;
    bus.flush().await?;

    server.stop().await?;
    let mut state = bus.watch_state();
    within(
        WAIT,
        "the bus to notice the outage",
        state.wait_for(|s| *s != ConnectionState::Connected),
    )
    .await??;
    let msg = msgs::outbound(INSTANCE);
    publish_windowed(&bus, &msg, n, window).await?;
    let depth = bus.outbox_stats().await?.map_or(0, |s| s.depth);
    if depth < n as u64 {
        return Err(fail(format!(
            "only {depth} of {n} messages were still queued when the server came back"
        )));
    }

    server.resume().await?;
    within(
        WAIT,
        "the bus to reconnect",
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await??;
    let start = Instant::now();
    let end = within(WAIT, "the drained messages", counter).await???;
    bus.flush().await?;
    Ok(rate(n, start, end))
}

/// `outbox_1m_rss_mib` (in the child): a bus on an unreachable server, `rss()` read before
/// queueing, then `count` messages queued with `window` in flight. Returns the RSS before and
/// the outbox depth after.
pub async fn queue_while_down(
    url: &str,
    path: &Path,
    count: usize,
    window: usize,
    rss: impl Fn() -> BenchResult<f64>,
) -> BenchResult<(f64, u64)> {
    let bus = Bus::builder()
        .nats([url])
        .outbox_path(path)
        .connect()
        .await?;
    let before = rss()?;
    let msg = msgs::outbound(INSTANCE);
    publish_windowed(&bus, &msg, count, window).await?;
    let depth = bus.outbox_stats().await?.map_or(0, |s| s.depth);
    if depth < count as u64 {
        return Err(fail(format!("only {depth} of {count} messages queued")));
    }
    Ok((before, depth))
}

/// The handler both sides of `handler_local` run: checks the message and counts it, and
/// signals when the `n`-th arrived.
async fn count_handler(
    env: bus::Envelope<Outbound>,
    count: &std::sync::atomic::AtomicUsize,
    n: usize,
    done: &Notify,
) -> Result<(), String> {
    if env.instance != INSTANCE {
        return Err("decoded the wrong message".into());
    }
    if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == n {
        done.notify_one();
    }
    Ok(())
}

/// `handler_local`, bus side: `Bus::handle` with default options.
pub async fn local_handle(n: usize) -> BenchResult<f64> {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(n + SLACK)
        .connect()
        .await?;
    // What the handler shares: one `Arc`, cloned into each message's future.
    let state = Arc::new((std::sync::atomic::AtomicUsize::new(0), Notify::new()));
    let shared = Arc::clone(&state);
    let handler = bus
        .handle(Outbound::filter().channel(CHANNEL), move |env| {
            let state = Arc::clone(&shared);
            async move { count_handler(env, &state.0, n, &state.1).await }
        })
        .await?;
    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(&bus).await?;
    }
    within(WAIT, "the local handler", state.1.notified()).await?;
    let end = Instant::now();
    if handler.stats().dead_lettered() > 0 {
        return Err(fail("the handler dead-lettered messages"));
    }
    handler.stop().await;
    Ok(rate(n, start, end))
}

/// `handler_local`, baseline: the loop over `subscribe` a user would write instead.
pub async fn local_loop_handler(n: usize) -> BenchResult<f64> {
    let bus = Bus::builder()
        .local()
        .subscription_capacity(n + SLACK)
        .connect()
        .await?;
    let mut sub = Outbound::subscribe(&bus, Outbound::filter().channel(CHANNEL)).await?;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (count.clone(), done.clone());
    let worker = tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            if let Err(e) = count_handler(item?, &c, n, &d).await {
                return Err(fail(e));
            }
        }
        Ok::<(), crate::runner::BoxError>(())
    });
    let msg = msgs::outbound(INSTANCE);
    let start = Instant::now();
    for _ in 0..n {
        msg.publish(&bus).await?;
    }
    within(WAIT, "the loop handler", done.notified()).await?;
    let end = Instant::now();
    worker.abort();
    Ok(rate(n, start, end))
}
