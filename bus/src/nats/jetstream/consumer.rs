//! Durable pull consumers: made or updated on demand, pulled in batches by a puller per
//! attached subscriber, made again where their handler stopped when they are lost.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{js_error_text, JetStream, Setup};
use crate::connection::ConnectionState;
use crate::durable::{AckHandle, AckKind, Acker, Delivery, DurableSpec, DurableSubscription};
use crate::error::{Error, Result};
use crate::nats::subscriber::{lock_sub, next_message, SharedSubscriber};

/// How long one pull request waits on the server before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// The server's idle heartbeat on a pull: two missed ones (4 s) mean the pull is gone (the
/// server holding it died, or the consumer moved): the puller starts again.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence on a pull (no message, no heartbeat) after which its requests count as gone.
const PULL_SILENCE: Duration = PULL_HEARTBEAT
    .saturating_mul(2)
    .saturating_add(Duration::from_millis(500));

/// The longest wait before a puller that failed starts again.
const PULL_RETRY_CAP: Duration = Duration::from_secs(2);

#[derive(serde::Serialize)]
struct StreamNamesRequest<'a> {
    subject: &'a str,
}

#[derive(serde::Deserialize)]
struct StreamNames {
    #[serde(default)]
    streams: Option<Vec<String>>,
}

impl JetStream {
    /// Attaches a puller to the durable consumer `spec.name` on the stream covering its pattern,
    /// creating the consumer (or updating it to `spec`) first.
    pub(crate) async fn consume(
        &self,
        spec: DurableSpec,
        state: watch::Receiver<ConnectionState>,
    ) -> Result<DurableSubscription> {
        spec.check()?;
        let stream = self.stream_for(&spec.pattern).await?;
        let progress = Arc::new(Mutex::new(Progress::default()));
        let made = durable_consumer(&self.context, &stream, &spec, |_| {
            jetstream::consumer::DeliverPolicy::New
        })
        .await?;
        lock_progress(&progress).attached(&made);
        tracing::debug!(durable = %spec.name, pattern = %spec.pattern, stream, "JetStream durable consumer attached");
        self.attach(stream, spec, state, progress).await
    }

    /// The stream whose subjects cover `pattern`: a declared one, else one the server has.
    async fn stream_for(&self, pattern: &str) -> Result<String> {
        if self.routes_anything() && *self.setup.borrow() != Setup::Ready {
            let mut rx = self.setup.subscribe();
            let _ = tokio::time::timeout(self.request_timeout, rx.wait_for(|s| *s == Setup::Ready))
                .await;
        }
        if let Some(stream) = self.covering(pattern) {
            return Ok(stream);
        }
        let names: jetstream::response::Response<StreamNames> = self
            .context
            .request("STREAM.NAMES", &StreamNamesRequest { subject: pattern })
            .await
            .map_err(|e| Error::nats("look up the stream covering a durable consumer", e))?;
        let names = match names {
            jetstream::response::Response::Ok(n) => n.streams.unwrap_or_default(),
            jetstream::response::Response::Err { error } => {
                return Err(Error::Stream {
                    reason: format!("cannot list the streams: {}", js_error_text(&error)),
                })
            }
        };
        for name in names {
            let Ok(mut s) = self.context.get_stream(&name).await else {
                continue;
            };
            let Ok(info) = s.info().await else { continue };
            if info
                .config
                .subjects
                .iter()
                .any(|subject| crate::stream::covers(subject, pattern))
            {
                return Ok(name);
            }
        }
        Err(Error::NoStream {
            pattern: pattern.to_owned(),
        })
    }
}

/// How far the handler of one durable consumer got, in stream sequences: where the consumer
/// starts when it has to be made again (deleted, or lost with its stream).
#[derive(Debug, Default)]
struct Progress {
    /// The creation time of the stream the consumer was last made on (Unix nanoseconds);
    /// another one means the stream was deleted and made again, its sequences restarted.
    stream_created: Option<i128>,
    /// The highest stream sequence acknowledged (or terminated), or the consumer's ack floor
    /// when it was attached, whichever is higher.
    acked: u64,
    /// Stream sequences delivered and not settled for good yet (not acked nor terminated).
    open: std::collections::BTreeSet<u64>,
}

impl Progress {
    /// The consumer was (re)made on a stream (and answered with its state).
    fn attached(&mut self, made: &Made) {
        if self.stream_created != Some(made.stream_created) {
            // A stream made again: its sequences mean nothing to the old ones.
            self.acked = 0;
            self.open.clear();
        }
        self.stream_created = Some(made.stream_created);
        self.acked = self.acked.max(made.ack_floor);
    }

    fn delivered(&mut self, seq: u64) {
        if seq > self.acked {
            self.open.insert(seq);
        }
    }

    fn settled(&mut self, seq: u64) {
        self.open.remove(&seq);
        self.acked = self.acked.max(seq);
    }

    /// Where a consumer made again starts on a stream created at `stream_created`: after the
    /// last ack (or at the oldest delivery still open), or at the start of a stream that is
    /// not the one the handler read.
    fn start(&self, stream_created: i128) -> jetstream::consumer::DeliverPolicy {
        use jetstream::consumer::DeliverPolicy;
        if self.stream_created != Some(stream_created) {
            return DeliverPolicy::All;
        }
        let start_sequence = self
            .open
            .first()
            .copied()
            .unwrap_or(self.acked.saturating_add(1));
        DeliverPolicy::ByStartSequence { start_sequence }
    }
}

fn lock_progress(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What making (or updating) a durable consumer found.
#[derive(Debug)]
struct Made {
    /// The stream's creation time, Unix nanoseconds.
    stream_created: i128,
    /// The consumer's ack floor, as a stream sequence.
    ack_floor: u64,
}

/// Creates the durable pull consumer `spec.name` on `stream`, or updates it to `spec`.
///
/// A consumer that exists keeps where it is (its deliver policy cannot change); one that does
/// not starts at `start(stream creation time)`: a new durable at the messages published from
/// now on, one made again at where its handler stopped (see [`Progress::start`]).
async fn durable_consumer(
    context: &jetstream::Context,
    stream: &str,
    spec: &DurableSpec,
    start: impl FnOnce(i128) -> jetstream::consumer::DeliverPolicy,
) -> Result<Made> {
    use jetstream::consumer::{pull, AckPolicy};
    let s = context
        .get_stream(stream)
        .await
        .map_err(|e| Error::Stream {
            reason: format!(
                "stream {stream:?} for durable consumer {:?}: {e}",
                spec.name
            ),
        })?;
    let stream_created = s.cached_info().created.unix_timestamp_nanos();
    let deliver_policy = match s.consumer_info(&spec.name).await {
        Ok(existing) => existing.config.deliver_policy,
        Err(_) => start(stream_created),
    };
    let config = pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subject: spec.pattern.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver.map_or(-1, i64::from),
        backoff: spec.backoff.clone(),
        max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer =
        s.create_consumer(config).await.map_err(|e| {
            let reason = match e.kind() {
                jetstream::stream::ConsumerErrorKind::JetStream(js) => js_error_text(&js),
                _ => e.to_string(),
            };
            Error::Durable {
                name: spec.name.clone(),
                reason: format!("cannot create or update it on stream {stream:?}: {reason}"),
            }
        })?;
    Ok(Made {
        stream_created,
        ack_floor: consumer.cached_info().ack_floor.stream_sequence,
    })
}

/// Settles a JetStream delivery: publishes the ack kind to its reply subject (kept as
/// async-nats's `Subject`, which clones without a copy).
struct NatsAck {
    client: async_nats::Client,
    reply: async_nats::Subject,
    /// The delivery's stream sequence, and its consumer's progress, told when it is settled.
    progress: Option<(u64, Arc<Mutex<Progress>>)>,
}

impl AckHandle for NatsAck {
    fn send(&self, kind: AckKind) -> futures::future::BoxFuture<'static, Result<()>> {
        let client = self.client.clone();
        let reply = self.reply.clone();
        let progress = match kind {
            AckKind::Ack | AckKind::Term => self.progress.clone(),
            AckKind::Nak(_) | AckKind::Progress => None,
        };
        Box::pin(async move {
            client
                .publish(reply, ack_payload(kind))
                .await
                .map_err(|e| Error::nats("acknowledge", e))?;
            if let Some((seq, progress)) = progress {
                lock_progress(&progress).settled(seq);
            }
            Ok(())
        })
    }
}

/// The delivery count and the stream sequence in a JetStream ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…` (9 tokens), or with domain and
/// account hash first (12 or more tokens, servers since 2.9). `None` if it is neither form or
/// the count does not read; the sequence is `None` alone if only it does not read.
///
/// Per delivery, so one pass over the bytes (`str::split` searching for each dot, twice, cost
/// about 3.7 k instructions per delivery).
fn ack_numbers(reply: &str) -> Option<(u32, Option<u64>)> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    // Where the first 7 tokens start (both forms' numbers lie within them), and how many
    // tokens there are.
    let mut starts = [0usize; 7];
    let mut tokens = 1;
    for (i, b) in rest.bytes().enumerate() {
        if b == b'.' {
            if let Some(s) = starts.get_mut(tokens) {
                *s = i + 1;
            }
            tokens += 1;
        }
    }
    let at = match tokens {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    // Token `k` (k + 1 < 7 <= tokens) ends where token `k + 1` starts, before its dot.
    let token = |k: usize| &rest[starts[k]..starts[k + 1] - 1];
    let delivered = token(at).parse().ok()?;
    Some((delivered, token(at + 1).parse().ok()))
}

/// A message on a puller's inbox as a [`Delivery`], if it is one (not a status message).
fn delivery(
    client: &async_nats::Client,
    progress: &Arc<Mutex<Progress>>,
    mut msg: async_nats::Message,
) -> Option<Delivery> {
    let reply = msg.reply.take()?;
    let Some((delivered, stream_seq)) = ack_numbers(reply.as_str()) else {
        tracing::warn!(subject = %msg.subject, reply = %reply, "JetStream delivery without a readable ack subject; skipped");
        return None;
    };
    let progress = stream_seq.map(|seq| {
        lock_progress(progress).delivered(seq);
        (seq, Arc::clone(progress))
    });
    let raw = crate::nats::convert::from_nats(msg);
    let acker = Acker::new(
        delivered,
        NatsAck {
            client: client.clone(),
            reply,
            progress,
        },
    );
    Some(Delivery::new(raw, acker))
}

/// The deliveries of one puller; dropping them unsubscribes its inbox at once (ahead of
/// anything the dropping task sends next), so that the server sends nothing more to it, and
/// naks what had arrived but was not taken.
struct Deliveries {
    rx: tokio::sync::mpsc::Receiver<Delivery>,
    /// Told each time one is taken: the puller may ask for more.
    taken: Arc<tokio::sync::Notify>,
    sub: SharedSubscriber,
    client: async_nats::Client,
    progress: Arc<Mutex<Progress>>,
}

impl futures::Stream for Deliveries {
    type Item = Delivery;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.taken.notify_one();
        }
        polled
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        let Some(mut sub) = lock_sub(&self.sub).take() else {
            return;
        };
        let _ = tokio::task::unconstrained(sub.unsubscribe()).now_or_never();
        // Sent to us before the UNSUB: back to the consumer at once, not after the ack wait.
        while let Some(Some(msg)) = tokio::task::unconstrained(sub.next()).now_or_never() {
            if let Some(d) = delivery(&self.client, &self.progress, msg) {
                d.acker.settle_detached(AckKind::Nak(Duration::ZERO));
            }
        }
    }
}

impl JetStream {
    /// Subscribes a puller's inbox and starts its pull task.
    async fn attach(
        &self,
        stream: String,
        spec: DurableSpec,
        state: watch::Receiver<ConnectionState>,
        progress: Arc<Mutex<Progress>>,
    ) -> Result<DurableSubscription> {
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::nats("subscribe the durable puller's inbox", e))?;
        let sub: SharedSubscriber = Arc::new(Mutex::new(Some(sub)));
        let (tx, rx) = tokio::sync::mpsc::channel(spec.prefetch);
        let taken = Arc::new(tokio::sync::Notify::new());
        let puller = Puller {
            client: self.client.clone(),
            context: self.context.clone(),
            next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", spec.name),
            stream,
            inbox,
            spec: spec.clone(),
            sub: Arc::clone(&sub),
            tx,
            taken: Arc::clone(&taken),
            outstanding: 0,
            progress: Arc::clone(&progress),
        };
        tokio::spawn(puller.run(state));
        Ok(DurableSubscription::new(
            spec.name,
            spec.pattern,
            Deliveries {
                rx,
                taken,
                sub,
                client: self.client.clone(),
                progress,
            },
        ))
    }
}

// Why our own puller and not async-nats 0.35's `pull::Consumer::messages()` stream: that
// stream checks its idle-heartbeat timer *before* it looks at the messages already buffered
// (`pull.rs`, `Stream::poll_next`), and the timer runs while the consumer is busy with the
// previous message. A handler slower than twice the heartbeat (2 x 15 s by default, or
// 2 x `PULL_HEARTBEAT` = 4 s with ours) therefore gets `missed idle heartbeat` although the
// heartbeats sit in the buffer, and the stream ends after the second; the bench's raw JetStream
// baseline, which uses that stream, failed all 5 rounds of one `--quick` run that way while this
// puller went on. This one reads every buffered message (heartbeats included) before it judges
// silence, counts silence only while a pull is open, and makes the consumer again when it is gone.
/// One puller: asks the consumer for messages in batches (a pull request on its own inbox)
/// as its subscriber takes them, and hands each delivery on.
///
/// Requests never ask for more than fits in the hand-off channel (`prefetch`), so it never
/// waits to hand one on. A request ends on the server after [`PULL_EXPIRES`] (a 408 says how
/// many it did not fill); while one is open the server sends an idle heartbeat every
/// [`PULL_HEARTBEAT`]. Silence for two heartbeats, or a reconnect, means the requests are gone
/// (their server died, the consumer moved): the consumer is made again if need be (a memory
/// stream after a restart) and the puller asks again.
struct Puller {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: String,
    next_subject: String,
    inbox: String,
    spec: DurableSpec,
    sub: SharedSubscriber,
    tx: tokio::sync::mpsc::Sender<Delivery>,
    taken: Arc<tokio::sync::Notify>,
    /// Messages asked for and not yet received.
    outstanding: usize,
    /// Where the handler got: where the consumer starts if it has to be made again.
    progress: Arc<Mutex<Progress>>,
}

impl Puller {
    async fn run(mut self, mut state: watch::Receiver<ConnectionState>) {
        let mut heard = tokio::time::Instant::now();
        // Whether the consumer must be made again (after a reconnect or a lost pull) before
        // asking, and when to try that next.
        let mut recreate = false;
        let mut retry_at = tokio::time::Instant::now();
        let mut retry_wait = Duration::from_millis(50);
        // One timer for the whole run: a message only moves `heard`, and the timer, when it
        // fires early, is set again to `heard + PULL_SILENCE` (a timer made per message cost a
        // timer-wheel insert and removal each).
        let silence = tokio::time::sleep_until(heard + PULL_SILENCE);
        tokio::pin!(silence);
        loop {
            let connected = *state.borrow() == ConnectionState::Connected;
            if connected && recreate && tokio::time::Instant::now() >= retry_at {
                let progress = &self.progress;
                let made = durable_consumer(&self.context, &self.stream, &self.spec, |created| {
                    lock_progress(progress).start(created)
                })
                .await;
                match made {
                    Ok(made) => {
                        lock_progress(&self.progress).attached(&made);
                        recreate = false;
                        retry_wait = Duration::from_millis(50);
                    }
                    Err(e) => {
                        tracing::warn!(durable = %self.spec.name, error = %e, "cannot attach to the durable consumer; will retry");
                        retry_at = tokio::time::Instant::now() + retry_wait;
                        retry_wait = (retry_wait * 2).min(PULL_RETRY_CAP);
                    }
                }
            }
            if connected && !recreate {
                let buffered = self.tx.max_capacity() - self.tx.capacity();
                let in_hand = self.outstanding + buffered;
                if in_hand <= self.spec.prefetch / 2 {
                    let n = self.spec.prefetch - in_hand;
                    if self.ask(n).await {
                        if self.outstanding == 0 {
                            heard = tokio::time::Instant::now();
                        }
                        self.outstanding += n;
                    }
                }
            }
            tokio::select! {
                biased;
                () = self.tx.closed() => return,
                msg = next_message(&self.sub) => {
                    let Some(msg) = msg else { return };
                    heard = tokio::time::Instant::now();
                    if let Some(lost) = self.on_message(msg) {
                        tracing::debug!(durable = %self.spec.name, reason = lost, "durable pull ended; asking again");
                        self.outstanding = 0;
                        recreate = true;
                    }
                }
                () = self.taken.notified() => {}
                changed = state.changed() => {
                    if changed.is_err() || *state.borrow() == ConnectionState::Closed {
                        return;
                    }
                    if *state.borrow() == ConnectionState::Connected {
                        // The server may have lost our requests (or the consumer, or moved it).
                        self.outstanding = 0;
                        recreate = true;
                        heard = tokio::time::Instant::now();
                    }
                }
                () = &mut silence, if self.outstanding > 0 && connected => {
                    if heard + PULL_SILENCE > tokio::time::Instant::now() {
                        // Heard from since the timer was set.
                        silence.as_mut().reset(heard + PULL_SILENCE);
                        continue;
                    }
                    tracing::debug!(durable = %self.spec.name, "no heartbeat from the durable pull; asking again");
                    self.outstanding = 0;
                    recreate = true;
                    heard = tokio::time::Instant::now();
                }
                // In a block: the timer is made only when the branch is on and polled.
                () = async { tokio::time::sleep_until(retry_at).await }, if recreate && connected => {}
            }
        }
    }

    /// Sends a pull request for `n` messages; `false` if it could not be sent.
    async fn ask(&self, n: usize) -> bool {
        let request = format!(
            "{{\"batch\":{n},\"expires\":{},\"idle_heartbeat\":{}}}",
            PULL_EXPIRES.as_nanos(),
            PULL_HEARTBEAT.as_nanos()
        );
        match self
            .client
            .publish_with_reply(
                self.next_subject.clone(),
                self.inbox.clone(),
                request.into(),
            )
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(durable = %self.spec.name, error = %e, "cannot send a pull request");
                false
            }
        }
    }

    /// Handles one message of the inbox. `Some(reason)`: the requests are gone, ask again.
    fn on_message(&mut self, msg: async_nats::Message) -> Option<&'static str> {
        use async_nats::StatusCode;
        let pending = |msg: &async_nats::Message| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get("Nats-Pending-Messages"))
                .and_then(|v| v.as_str().parse::<usize>().ok())
        };
        match msg.status {
            None | Some(StatusCode::OK) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                if let Some(d) = delivery(&self.client, &self.progress, msg) {
                    // Never full: requests only ask for what fits.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Full(d)) =
                        self.tx.try_send(d)
                    {
                        d.acker.settle_detached(AckKind::Nak(Duration::ZERO));
                    }
                }
                None
            }
            Some(StatusCode::IDLE_HEARTBEAT) => None,
            Some(StatusCode::TIMEOUT) => {
                // A request expired: it says how many it did not fill.
                match pending(&msg) {
                    Some(n) => {
                        self.outstanding = self.outstanding.saturating_sub(n);
                        None
                    }
                    None => Some("a pull request expired"),
                }
            }
            Some(StatusCode::REQUEST_TERMINATED) => {
                let deleted = msg
                    .description
                    .as_deref()
                    .is_some_and(|d| d.contains("Consumer Deleted"));
                match pending(&msg) {
                    Some(n) if !deleted => {
                        self.outstanding = self.outstanding.saturating_sub(n);
                        None
                    }
                    _ => Some("the pull was terminated"),
                }
            }
            Some(status) => {
                tracing::debug!(durable = %self.spec.name, %status, description = ?msg.description, "unexpected status on a durable pull");
                Some("an unexpected status")
            }
        }
    }
}

/// The `Bytes` of an ack kind JetStream understands.
pub(crate) fn ack_payload(kind: AckKind) -> Bytes {
    match kind {
        AckKind::Ack => Bytes::from_static(b"+ACK"),
        AckKind::Nak(d) if d.is_zero() => Bytes::from_static(b"-NAK"),
        AckKind::Nak(d) => format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into(),
        AckKind::Progress => Bytes::from_static(b"+WPI"),
        AckKind::Term => Bytes::from_static(b"+TERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_and_stream_seq_are_read_from_both_ack_subject_forms() {
        assert_eq!(
            ack_numbers("$JS.ACK.S.C.3.10.9.1700000000000000000.0"),
            Some((3, Some(10)))
        );
        assert_eq!(
            ack_numbers("$JS.ACK.hub.HASH.S.C.2.11.9.1700000000000000000.0.tok"),
            Some((2, Some(11)))
        );
        assert_eq!(
            ack_numbers("$JS.ACK._.HASH.S.C.7.1.1.1700000000000000000.5"),
            Some((7, Some(1)))
        );
        assert_eq!(
            ack_numbers("$JS.ACK.hub.HASH.S.C.2.x.9.1700000000000000000.0"),
            Some((2, None))
        );
        assert_eq!(
            ack_numbers("$JS.ACK.S.C.x.10.9.1700000000000000000.0"),
            None
        );
        assert_eq!(ack_numbers("_INBOX.x"), None);
        assert_eq!(ack_numbers("$JS.ACK.S.C"), None);
        assert_eq!(ack_numbers("$JS.ACK.S.C.3.10.9.1700000000000000000"), None);
        assert_eq!(ack_numbers("$JS.ACK......."), None);
    }

    /// A consumer made again starts at the oldest delivery still open, else after the last
    /// ack; on a stream made again, at its start.
    #[test]
    fn a_consumer_made_again_starts_where_its_handler_stopped() {
        use jetstream::consumer::DeliverPolicy;
        let mut p = Progress::default();
        p.attached(&Made {
            stream_created: 1,
            ack_floor: 4,
        });
        let at = |start_sequence| DeliverPolicy::ByStartSequence { start_sequence };
        assert_eq!(p.start(1), at(5));
        for seq in 5..=8 {
            p.delivered(seq);
        }
        p.settled(5);
        p.settled(7);
        assert_eq!(p.start(1), at(6), "6 is not acked yet");
        p.settled(6);
        p.settled(8);
        assert_eq!(p.start(1), at(9));
        assert_eq!(p.start(2), DeliverPolicy::All, "another stream");
        p.attached(&Made {
            stream_created: 2,
            ack_floor: 0,
        });
        assert_eq!(p.start(2), at(1));
    }

    #[test]
    fn ack_payloads_are_jetstreams() {
        assert_eq!(ack_payload(AckKind::Ack), "+ACK");
        assert_eq!(ack_payload(AckKind::Nak(Duration::ZERO)), "-NAK");
        assert_eq!(
            ack_payload(AckKind::Nak(Duration::from_millis(5))),
            "-NAK {\"delay\":5000000}"
        );
        assert_eq!(ack_payload(AckKind::Progress), "+WPI");
        assert_eq!(ack_payload(AckKind::Term), "+TERM");
    }
}
