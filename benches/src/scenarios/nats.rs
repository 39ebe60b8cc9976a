//! The NATS scenarios: `nats_pubsub_typed`, `nats_pubsub_durable`, `nats_request_p50`,
//! `drain_after_outage`. Baselines are raw async-nats written the way one would by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::msgs::{self, PATTERN, PAYLOAD_BYTES, REQUEST_SUBJECT, SUBJECT, WARM_SUBJECT};
use crate::runner::{fail, rate, warm_up, within, BenchResult, Rounds, Sample, SLACK, WAIT};
use crate::sdk;
use crate::server::Server;

/// `nats_pubsub_typed` (outbox off) and `nats_pubsub_durable` (outbox on).
pub struct PubSub {
    /// The server URL.
    pub url: String,
    /// Outbox on.
    pub durable: bool,
    /// In-flight publishes of the durable bus side (group commit needs concurrent publishes).
    pub window: usize,
    /// The bus side's wire headers (`NoId` for `diag_durable_noid`).
    pub wire: bus::WireHeaders,
}

impl Rounds for PubSub {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_pubsub_typed(&self.url, n).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        if self.durable {
            sdk::pubsub_durable(&self.url, n, self.window, self.wire).await
        } else {
            sdk::pubsub_typed(&self.url, n).await
        }
        .map(Sample::value)
    }
    async fn old_baseline(&mut self, n: usize) -> Option<BenchResult<Sample>> {
        Some(raw_pubsub_typed_old(&self.url, n).await.map(Sample::value))
    }
}

/// Raw async-nats, end to end: one connection publishes, another subscribes (publisher and
/// subscriber are different processes in real use; the bus side has the same shape). The
/// subscriber's buffer holds the whole round, so nothing can be dropped; it counts exactly `n`.
async fn raw_pubsub(url: &str, n: usize) -> BenchResult<f64> {
    let payload = msgs::outbound_bytes();
    let pair = RawPair::connect(url, n, check_bytes).await?;
    let publisher = &pair.publisher;

    let start = Instant::now();
    for _ in 0..n {
        publisher.publish(SUBJECT, payload.clone()).await?;
    }
    pair.finish(n, start).await
}

/// The hand-written typed baseline of `nats_pubsub_typed` and `nats_pubsub_durable`: what a
/// careful engineer writes with async-nats and rmp-serde instead of the SDK. Per message the
/// publisher builds the subject from the struct's fields into a reused `String` and encodes the
/// struct with a [`msgs::HandEncoder`] (reused scratch buffer, one copy), and the subscriber
/// decodes it back (`from_slice`): the same work the typed API does, by hand, with the same 128
/// bytes on the wire. Connections and buffers as in [`raw_pubsub`].
pub async fn raw_pubsub_typed(url: &str, n: usize) -> BenchResult<f64> {
    let msg = msgs::outbound(msgs::INSTANCE);
    let pair = RawPair::connect(url, n, check_typed).await?;
    let publisher = &pair.publisher;
    let mut encoder = msgs::HandEncoder::new();

    let start = Instant::now();
    for _ in 0..n {
        let payload = encoder.encode(&msg)?;
        publisher
            .publish(msgs::outbound_subject(&msg), payload)
            .await?;
    }
    pair.finish(n, start).await
}

/// The previous typed baseline (round 1), kept to report old and new ratios side by side: a
/// `format!` subject and `to_vec_named` into a fresh `Vec` per message.
async fn raw_pubsub_typed_old(url: &str, n: usize) -> BenchResult<f64> {
    let msg = msgs::outbound(msgs::INSTANCE);
    let pair = RawPair::connect(url, n, check_typed).await?;
    let publisher = &pair.publisher;

    let start = Instant::now();
    for _ in 0..n {
        let subject = format!("plugin.outbound.{}.{}", msg.channel, msg.instance);
        let payload = rmp_serde::to_vec_named(&msg)?;
        publisher.publish(subject, payload.into()).await?;
    }
    pair.finish(n, start).await
}

/// Decodes a measured message into an [`msgs::Outbound`], as the typed baseline's subscriber
/// does by hand.
fn check_typed(m: &async_nats::Message) -> BenchResult<()> {
    let body: msgs::Outbound = rmp_serde::from_slice(&m.payload)?;
    if body.instance != msgs::INSTANCE {
        return Err(fail(format!("raw message for {:?}", body.instance)));
    }
    Ok(())
}

/// Diagnostic (`--only diag_pubsub_bytes`): the typed bus against raw async-nats sending
/// pre-encoded bytes that the subscriber never decodes: the SDK's whole cost, encoding and
/// decoding included, against moving bytes.
pub struct BytesDiag {
    /// The server URL.
    pub url: String,
}

impl Rounds for BytesDiag {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_pubsub(&self.url, n).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::pubsub_typed(&self.url, n).await.map(Sample::value)
    }
}

/// Diagnostic (`--only diag_raw_headers`): raw async-nats as [`raw_pubsub`] but carrying the
/// wire format's four headers (two ids, content type, type name), built per message as a hand
/// writer of the same wire format would. Separates the cost of the wire format inside async-nats
/// from the cost of the SDK's own code.
pub async fn raw_pubsub_headers(url: &str, n: usize) -> BenchResult<f64> {
    let payload = msgs::outbound_bytes();
    let pair = RawPair::connect(url, n, check_bytes).await?;
    let publisher = &pair.publisher;

    let k: usize = std::env::var("DIAG_HEADERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let start = Instant::now();
    for i in 0..n {
        let id = format!("{:016x}{i:016x}", 0x5eed_u64);
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id.as_str());
        if k > 1 {
            h.insert("Bus-Msg-Id", id.as_str());
        }
        if k > 2 {
            h.insert("Content-Type", "application/msgpack");
        }
        if k > 3 {
            h.insert("Bus-Type", "bus_bench::msgs::Outbound");
        }
        publisher
            .publish_with_headers(SUBJECT, h, payload.clone())
            .await?;
    }
    pair.finish(n, start).await
}

/// The diagnostic of [`raw_pubsub_headers`] against plain [`raw_pubsub`].
pub struct HeadersDiag {
    /// The server URL.
    pub url: String,
}

impl Rounds for HeadersDiag {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_pubsub(&self.url, n).await.map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        raw_pubsub_headers(&self.url, n).await.map(Sample::value)
    }
}

/// A raw round's two connections (publisher and subscriber are different processes in real
/// use), with the subscriber's counting task already seeing messages.
struct RawPair {
    publisher: async_nats::Client,
    /// Held so the subscriber's connection lives as long as the round.
    _subscriber: async_nats::Client,
    counter: JoinHandle<BenchResult<Instant>>,
}

impl RawPair {
    /// Connects the publisher and the subscriber sized for `n`, starts the counter with `check`
    /// and probes until its subscription is live.
    async fn connect(url: &str, n: usize, check: Check) -> BenchResult<RawPair> {
        let publisher = async_nats::connect(url).await?;
        let subscriber = subscriber_client(url, n).await?;
        let counter = start_counter(&publisher, &subscriber, n, check).await?;
        Ok(RawPair {
            publisher,
            _subscriber: subscriber,
            counter,
        })
    }

    /// Flushes the publisher and waits for the counter: the round's rate from `start`.
    async fn finish(self, n: usize, start: Instant) -> BenchResult<f64> {
        finish(&self.publisher, self.counter, n, start).await
    }
}

/// A raw connection whose subscription buffer holds a whole round of `n`, so nothing drops.
async fn subscriber_client(url: &str, n: usize) -> BenchResult<async_nats::Client> {
    Ok(ConnectOptions::new()
        .subscription_capacity(n + SLACK)
        .connect(url)
        .await?)
}

/// Subscribes `sub_client` to [`PATTERN`], counts there with `check`, and probes from
/// `publisher` until the subscription is live at the server.
async fn start_counter(
    publisher: &async_nats::Client,
    sub_client: &async_nats::Client,
    n: usize,
    check: Check,
) -> BenchResult<JoinHandle<BenchResult<Instant>>> {
    let sub = sub_client.subscribe(PATTERN).await?;
    let warm = Arc::new(Notify::new());
    let counter = spawn_counter(sub, n, warm.clone(), check);
    raw_probe(publisher, &warm).await?;
    Ok(counter)
}

/// Flushes the publisher and waits for the counter: the round's rate from `start`.
async fn finish(
    publisher: &async_nats::Client,
    counter: JoinHandle<BenchResult<Instant>>,
    n: usize,
    start: Instant,
) -> BenchResult<f64> {
    publisher.flush().await?;
    let end = within(WAIT, "the raw subscriber", counter).await???;
    Ok(rate(n, start, end))
}

/// Checks one measured raw message; an `Err` fails the round.
type Check = fn(&async_nats::Message) -> BenchResult<()>;

/// Checks that a measured message carries the payload's bytes, without decoding them.
fn check_bytes(m: &async_nats::Message) -> BenchResult<()> {
    if m.payload.len() != PAYLOAD_BYTES {
        return Err(fail(format!("raw payload of {} bytes", m.payload.len())));
    }
    Ok(())
}

/// Counts `n` measured messages on a raw subscription, each passing `check`, and returns when
/// the last arrived. Probes (on [`WARM_SUBJECT`]) wake `warm` and are not counted.
fn spawn_counter(
    mut sub: async_nats::Subscriber,
    n: usize,
    warm: Arc<Notify>,
    check: Check,
) -> JoinHandle<BenchResult<Instant>> {
    tokio::spawn(async move {
        let mut count = 0usize;
        while let Some(m) = sub.next().await {
            if m.subject.as_str() == WARM_SUBJECT {
                warm.notify_one();
                continue;
            }
            check(&m)?;
            count += 1;
            if count == n {
                return Ok(Instant::now());
            }
        }
        Err(fail(format!("raw subscription ended after {count} of {n}")))
    })
}

/// Publishes probes until the subscriber saw one: then its subscription is live at the server.
async fn raw_probe(client: &async_nats::Client, warm: &Notify) -> BenchResult<()> {
    let probe = Bytes::from_static(b"probe");
    for _ in 0..200 {
        client.publish(WARM_SUBJECT, probe.clone()).await?;
        client.flush().await?;
        if tokio::time::timeout(Duration::from_millis(50), warm.notified())
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(fail("the subscription never saw a probe"))
}

/// `nats_request_p99_c10`: [`REQUESTERS`] tasks on one connection each making requests one after
/// the other, bus and raw rounds paired; the p99 in µs (the p50 beside it).
pub struct RequestConcurrent {
    /// The server URL.
    pub url: String,
    /// The bus side of the last paired round.
    pub pending_bus: Option<Sample>,
}

/// The concurrent requesters of `nats_request_p99_c10`.
pub const REQUESTERS: usize = 10;

impl Rounds for RequestConcurrent {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        let raw = Arc::new(RawRequester::start(&self.url, RawRequestShape::default()).await?);
        let bus = Arc::new(sdk::BusRequester::start(&self.url).await?);
        let per_task = (n / REQUESTERS).max(20);
        let raw_lat = concurrent(REQUESTERS, per_task, |i| {
            let raw = raw.clone();
            async move { raw.once(i).await }
        })
        .await?;
        let bus_lat = concurrent(REQUESTERS, per_task, |_| {
            let bus = bus.clone();
            async move { bus.once().await }
        })
        .await?;
        self.pending_bus = Some(p99_headline(bus_lat));
        Ok(p99_headline(raw_lat))
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        if let Some(s) = self.pending_bus.take() {
            return Ok(s);
        }
        let bus = Arc::new(sdk::BusRequester::start(&self.url).await?);
        let lat = concurrent(REQUESTERS, (n / REQUESTERS).max(20), |_| {
            let bus = bus.clone();
            async move { bus.once().await }
        })
        .await?;
        Ok(p99_headline(lat))
    }
}

/// A latency sample whose headline is the p99 (the p99 and the max beside it, as every
/// latency row has them).
fn p99_headline(lat: Vec<Duration>) -> Sample {
    let s = Sample::latencies(lat);
    Sample {
        value: s.p99.unwrap_or(s.value),
        p99: s.p99,
        max: s.max,
    }
}

/// `k` tasks each making `per_task` requests one after the other; every latency, sorted.
pub async fn concurrent<F, Fut>(k: usize, per_task: usize, make: F) -> BenchResult<Vec<Duration>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = BenchResult<Duration>> + Send + 'static,
{
    let tasks: Vec<_> = (0..k)
        .map(|t| {
            let reqs: Vec<Fut> = (0..per_task).map(|i| make(t * per_task + i)).collect();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(reqs.len());
                for r in reqs {
                    lat.push(r.await?);
                }
                Ok::<_, crate::runner::BoxError>(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(k * per_task);
    for t in futures::future::join_all(tasks).await {
        all.extend(t??);
    }
    all.sort_unstable();
    Ok(all)
}

/// `nats_request_p50`: sequential requests, latency of each; p50 and p99 in µs.
///
/// Latency on a shared machine drifts by tens of percent within seconds, so one round sets up
/// both sides and alternates them request by request (raw, bus, bus, raw, …): both see the same
/// machine. The bus figures of a round are kept for the bus call that follows it.
pub struct Request {
    /// The server URL.
    pub url: String,
    /// The bus side of the last paired round.
    pub pending_bus: Option<Sample>,
}

impl Rounds for Request {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        let raw = RawRequester::start(&self.url, RawRequestShape::default()).await?;
        let bus = sdk::BusRequester::start(&self.url).await?;
        let (mut raw_lat, mut bus_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i.is_multiple_of(2) {
                raw_lat.push(raw.once(i).await?);
                bus_lat.push(bus.once().await?);
            } else {
                bus_lat.push(bus.once().await?);
                raw_lat.push(raw.once(i).await?);
            }
        }
        self.pending_bus = Some(latency_sample(bus_lat));
        Ok(latency_sample(raw_lat))
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        if let Some(s) = self.pending_bus.take() {
            return Ok(s);
        }
        // Alone (`--side bus`): a round of the bus only.
        let bus = sdk::BusRequester::start(&self.url).await?;
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            lat.push(bus.once().await?);
        }
        Ok(latency_sample(lat))
    }
}

/// Variations of the raw request/reply, for the diagnostics that explain the bus's latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRequestShape {
    /// Carry the wire format's headers (five on the request, two on the reply) as the bus does.
    pub headers: bool,
    /// Answer each request on a task of its own, as `Bus::serve` does.
    pub spawn: bool,
}

/// Raw async-nats request/reply written by hand: a responder connection answering every request
/// with the encoded reply, a requester connection calling `request` one at a time.
pub struct RawRequester {
    client: async_nats::Client,
    request: Bytes,
    shape: RawRequestShape,
    serve: JoinHandle<()>,
}

impl RawRequester {
    /// Starts the responder, connects the requester and warms both up.
    pub async fn start(url: &str, shape: RawRequestShape) -> BenchResult<RawRequester> {
        let request = Bytes::from(rmp_serde::to_vec_named(&msgs::delegate())?);
        let reply = Bytes::from(rmp_serde::to_vec_named(&msgs::RouteReply {
            accepted: true,
        })?);
        let responder = async_nats::connect(url).await?;
        let mut sub = responder.subscribe(REQUEST_SUBJECT).await?;
        responder.flush().await?;
        let serve = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(to) = m.reply else { continue };
                let (client, reply) = (responder.clone(), reply.clone());
                let answer = async move {
                    if shape.headers {
                        let mut h = async_nats::HeaderMap::new();
                        if let Some(c) =
                            m.headers.as_ref().and_then(|h| h.get("Bus-Correlation-Id"))
                        {
                            h.insert("Bus-Correlation-Id", c.as_str());
                        }
                        h.insert("Content-Type", "application/msgpack");
                        client.publish_with_headers(to, h, reply).await
                    } else {
                        client.publish(to, reply).await
                    }
                };
                if shape.spawn {
                    tokio::spawn(answer);
                } else if answer.await.is_err() {
                    break;
                }
            }
        });
        let r = RawRequester {
            client: async_nats::connect(url).await?,
            request,
            shape,
            serve,
        };
        // The first requests can race the responder's SUB reaching the server: retry those.
        let requester = &r;
        warm_up(|i| async move { requester.send(i).await.is_ok() }).await;
        Ok(r)
    }

    async fn send(&self, i: usize) -> Result<async_nats::Message, async_nats::RequestError> {
        let mut req = async_nats::Request::new().payload(self.request.clone());
        if self.shape.headers {
            let id = format!("{:016x}{i:016x}", 0x5eed_u64);
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            h.insert("Content-Type", "application/msgpack");
            h.insert("Bus-Type", "bus_bench::msgs::Delegate");
            h.insert("Bus-Correlation-Id", id.as_str());
            req = req.headers(h);
        }
        self.client.send_request(REQUEST_SUBJECT, req).await
    }

    /// One timed request.
    pub async fn once(&self, i: usize) -> BenchResult<Duration> {
        let t = Instant::now();
        let m = self.send(i).await?;
        let took = t.elapsed();
        if m.payload.is_empty() {
            return Err(fail("empty raw reply"));
        }
        Ok(took)
    }
}

impl Drop for RawRequester {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

/// Diagnostic: plain raw request/reply (baseline) vs raw in another shape ("bus"), paired
/// request by request as in [`Request`].
pub struct RequestDiag {
    /// The server URL.
    pub url: String,
    /// The shape of the "bus" side.
    pub shape: RawRequestShape,
    /// The other side of the last paired round.
    pub pending: Option<Sample>,
}

impl Rounds for RequestDiag {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        let plain = RawRequester::start(&self.url, RawRequestShape::default()).await?;
        let other = RawRequester::start(&self.url, self.shape).await?;
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i.is_multiple_of(2) {
                a.push(plain.once(i).await?);
                b.push(other.once(i).await?);
            } else {
                b.push(other.once(i).await?);
                a.push(plain.once(i).await?);
            }
        }
        self.pending = Some(latency_sample(b));
        Ok(latency_sample(a))
    }
    async fn bus(&mut self, _n: usize) -> BenchResult<Sample> {
        self.pending
            .take()
            .ok_or_else(|| fail("diagnostics run only with --side both"))
    }
}

/// p50 (headline) and p99 of latencies, in µs.
pub fn latency_sample(lat: Vec<Duration>) -> Sample {
    Sample::latencies(lat)
}

/// `drain_after_outage`: the bus queues `n` messages in its outbox while the server is down, then
/// drains them once it is back (msg/s from reconnect to the last message received); the
/// baseline is raw async-nats publishing the same `n` messages with the server up.
pub struct Drain<'a> {
    /// The server, stopped and restarted by the bus rounds.
    pub server: &'a mut Server,
    /// In-flight publishes while queueing.
    pub window: usize,
}

impl Rounds for Drain<'_> {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_publish_rate(&self.server.client_url(), n)
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::drain(self.server, n, self.window)
            .await
            .map(Sample::value)
    }
}

/// Raw async-nats publish rate, counted end to end by a subscriber on the same connection (the
/// bus side drains into a subscriber on its own connection too).
async fn raw_publish_rate(url: &str, n: usize) -> BenchResult<f64> {
    let payload = msgs::outbound_bytes();
    let client = subscriber_client(url, n).await?;
    let counter = start_counter(&client, &client, n, check_bytes).await?;
    let start = Instant::now();
    for _ in 0..n {
        client.publish(SUBJECT, payload.clone()).await?;
    }
    finish(&client, counter, n, start).await
}

/// `nats_fanout_10`: one publisher, `subscribers` typed subscribers each on its own connection
/// (ten plugins listening to one producer), msg/s published until every subscriber has every
/// message; the baseline is the same topology by hand ([`raw_pubsub_typed`]'s encoding and
/// decoding, one raw connection per subscriber).
pub struct Fanout {
    /// The server URL.
    pub url: String,
    /// Subscribers per side.
    pub subscribers: usize,
}

impl Rounds for Fanout {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_fanout(&self.url, n, self.subscribers)
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::fanout_typed(&self.url, n, self.subscribers)
            .await
            .map(Sample::value)
    }
}

/// The hand-written side of [`Fanout`].
async fn raw_fanout(url: &str, n: usize, subscribers: usize) -> BenchResult<f64> {
    let msg = msgs::outbound(msgs::INSTANCE);
    let publisher = async_nats::connect(url).await?;
    let mut clients = Vec::with_capacity(subscribers);
    let mut counters = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let client = subscriber_client(url, n).await?;
        counters.push(start_counter(&publisher, &client, n, check_typed).await?);
        clients.push(client);
    }
    let mut encoder = msgs::HandEncoder::new();
    let start = Instant::now();
    for _ in 0..n {
        publisher
            .publish(msgs::outbound_subject(&msg), encoder.encode(&msg)?)
            .await?;
    }
    publisher.flush().await?;
    let mut end = start;
    for counter in counters {
        end = end.max(within(WAIT, "a raw fan-out subscriber", counter).await???);
    }
    Ok(rate(n, start, end))
}

/// Diagnostic (`--only diag_durable_by_hand`): `nats_pubsub_durable`'s bus side against the same
/// guarantee written by hand: a SQLite outbox and raw async-nats sending one `Nats-Msg-Id`.
pub struct DurableByHand {
    /// The server URL.
    pub url: String,
    /// Rows per transaction by hand, publishes in flight on the bus side.
    pub window: usize,
}

impl Rounds for DurableByHand {
    async fn baseline(&mut self, n: usize) -> BenchResult<Sample> {
        raw_durable_by_hand(&self.url, n, self.window)
            .await
            .map(Sample::value)
    }
    async fn bus(&mut self, n: usize) -> BenchResult<Sample> {
        sdk::pubsub_durable(&self.url, n, self.window, bus::WireHeaders::default())
            .await
            .map(Sample::value)
    }
}

/// A row of the hand-written outbox: its id, subject and encoded payload.
type HandRow = (i64, String, Bytes);

/// A durable publisher as a careful engineer writes it without the SDK, pipelined in three
/// stages like the SDK's: the producer encodes `window` messages at a time (as the typed
/// baseline) and hands them to a SQLite thread (the outbox file of `outbox_publish_rate`'s
/// baseline: WAL, `synchronous=NORMAL`, one transaction per batch, one cached statement); once a
/// batch is committed, a publishing task sends each message with its `Nats-Msg-Id`, flushes
/// (the server has them all), and has the thread delete the batch's rows. At most two batches
/// wait for their commit, which bounds the producer as the SDK's publish window does. msg/s from
/// the first message produced to the last received (decoded as the typed baseline).
pub async fn raw_durable_by_hand(url: &str, n: usize, window: usize) -> BenchResult<f64> {
    use std::fmt::Write as _;

    let pair = RawPair::connect(url, n, check_typed).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hand.sqlite3");
    let (to_sql, mut batches) = tokio::sync::mpsc::channel::<Vec<HandRow>>(2);
    let (to_nats, mut committed) = tokio::sync::mpsc::unbounded_channel::<Vec<HandRow>>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<i64>();
    let writer = std::thread::spawn(move || -> BenchResult<()> {
        use crate::hand_outbox::{insert_by_hand, now_ms, open_by_hand, INSERT};
        let mut conn = open_by_hand(&path)?;
        let mut headers = String::with_capacity(64);
        while let Some(rows) = batches.blocking_recv() {
            let now = now_ms();
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(INSERT)?;
                for (id, subject, payload) in &rows {
                    insert_by_hand(&mut insert, &mut headers, *id, subject, payload, now)?;
                }
                if let Some(last) = done_rx.try_iter().last() {
                    tx.execute("DELETE FROM outbox WHERE id <= ?1", [last])?;
                }
            }
            tx.commit()?;
            if to_nats.send(rows).is_err() {
                break;
            }
        }
        Ok(())
    });
    let publisher = pair.publisher.clone();
    let sender = tokio::spawn(async move {
        let mut id = String::with_capacity(32);
        while let Some(rows) = committed.recv().await {
            let last = rows.last().map_or(0, |r| r.0);
            for (i, subject, payload) in rows {
                id.clear();
                write!(id, "{:016x}{i:016x}", 0x5eed_u64)?;
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                publisher.publish_with_headers(subject, h, payload).await?;
            }
            publisher.flush().await?;
            let _ = done_tx.send(last);
        }
        Ok::<(), crate::runner::BoxError>(())
    });

    let msg = msgs::outbound(msgs::INSTANCE);
    let mut encoder = msgs::HandEncoder::new();
    let start = Instant::now();
    let mut next: i64 = 0;
    while (next as usize) < n {
        let size = window.min(n - next as usize);
        let mut rows = Vec::with_capacity(size);
        for _ in 0..size {
            next += 1;
            rows.push((next, msgs::outbound_subject(&msg), encoder.encode(&msg)?));
        }
        to_sql
            .send(rows)
            .await
            .map_err(|_| fail("the hand-written outbox thread stopped"))?;
    }
    drop(to_sql);
    let rate = pair.finish(n, start).await?;
    within(WAIT, "the hand-written sender", sender).await???;
    writer
        .join()
        .map_err(|_| fail("the hand-written outbox thread panicked"))??;
    Ok(rate)
}
