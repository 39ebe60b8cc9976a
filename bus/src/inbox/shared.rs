//! [`SharedStore`]: completions in a JetStream key-value bucket, shared by every instance of a
//! handler (a queue group spread over processes), where creating a key is the claim.
//!
//! A key per msg id, in bucket `bus_inbox_<handler>` (max age: the window). Its value is
//! `claimed:<deadline in unix ms>` while an instance runs the message, `done` once it finished.
//! Claiming is creating the key (or, over an expired claim or a released one, a
//! revision-checked update): of two instances only one succeeds. A claim whose deadline (the
//! handler's ack wait) passed, because its process died mid-handler, is taken over by the next
//! instance the message reaches; a live claim makes another copy wait until it is done
//! (skipped) or expired (taken over).

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;

use crate::clock::now_ms;
use crate::error::{Error, Result};

/// How often a copy waiting for another instance's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// One handler's completions in a key-value bucket (see the [module docs](self)).
pub(crate) struct SharedStore {
    kv: kv::Store,
    claim_for: Duration,
}

/// What the bucket says of a msg id.
pub(crate) enum SharedClaim {
    /// Claimed by this instance: run it.
    Run,
    /// Done by some instance within the window.
    Done,
}

fn kv_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Durable {
        name: "inbox".into(),
        reason: format!("{what}: {e}"),
    }
}

/// The bucket of handler `name`: its characters outside `[A-Za-z0-9_-]` become `_`.
pub(crate) fn bucket_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("bus_inbox_{clean}")
}

/// The key of a msg id: itself when it is a valid key, else `x` and its bytes in hex.
fn key(msg_id: &str) -> String {
    let valid = !msg_id.is_empty()
        && !msg_id.starts_with('.')
        && !msg_id.ends_with('.')
        && !msg_id.contains("..")
        && msg_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b));
    if valid {
        return msg_id.to_owned();
    }
    let mut k = String::with_capacity(1 + 2 * msg_id.len());
    k.push('x');
    for b in msg_id.bytes() {
        k.push_str(&format!("{b:02x}"));
    }
    k
}

impl SharedStore {
    /// The bucket of handler `name` (created if missing, entries kept `window`); a claim lasts
    /// `claim_for` (the ack wait).
    pub(crate) async fn open(
        js: &async_nats::jetstream::Context,
        name: &str,
        window: Duration,
        claim_for: Duration,
    ) -> Result<SharedStore> {
        let bucket = bucket_name(name);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: format!("bus: completions of handler {name:?}"),
                    history: 1,
                    max_age: window,
                    ..Default::default()
                })
                .await
                .map_err(|e| kv_err(&format!("cannot create the inbox bucket {bucket}"), e))?,
        };
        Ok(SharedStore { kv, claim_for })
    }

    /// Claims `msg_id` for this instance, or learns that it is done; waits while another
    /// instance holds a live claim on it.
    pub(crate) async fn claim(&self, msg_id: &str) -> Result<SharedClaim> {
        let key = key(msg_id);
        loop {
            let claim = Bytes::from(format!(
                "claimed:{}",
                now_ms() + self.claim_for.as_millis() as i64
            ));
            if self.kv.update(&key, claim.clone(), 0).await.is_ok() {
                return Ok(SharedClaim::Run);
            }
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| kv_err("cannot read the inbox bucket", e))?;
            let Some(entry) = entry else {
                // Gone between the two calls (aged out): try again.
                continue;
            };
            let free = match entry.operation {
                Operation::Delete | Operation::Purge => true,
                Operation::Put if entry.value.as_ref() == b"done" => return Ok(SharedClaim::Done),
                Operation::Put => std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| v.strip_prefix("claimed:"))
                    .and_then(|d| d.parse::<i64>().ok())
                    .is_none_or(|deadline| deadline < now_ms()),
            };
            if free {
                // Revision-checked: of two instances taking it over, one wins.
                if self.kv.update(&key, claim, entry.revision).await.is_ok() {
                    return Ok(SharedClaim::Run);
                }
                continue;
            }
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// Records `msg_id` as done (a few tries).
    pub(crate) async fn done(&self, msg_id: &str) -> Result<()> {
        let key = key(msg_id);
        let mut last = None;
        for _ in 0..3 {
            match self.kv.put(&key, Bytes::from_static(b"done")).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(kv_err(
            "cannot record a completion in the inbox bucket",
            last.map_or_else(String::new, |e| e.to_string()),
        ))
    }

    /// Gives a claim up (the attempt failed): another instance may take it at once.
    pub(crate) async fn release(&self, msg_id: &str) {
        let _ = self
            .kv
            .put(key(msg_id), Bytes::from_static(b"claimed:0"))
            .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_and_buckets_are_valid() {
        assert_eq!(super::key("m-1"), "m-1");
        assert_eq!(super::key("abc.0"), "abc.0");
        assert_eq!(super::key("a b"), "x612062");
        assert_eq!(super::key(".a"), "x2e61");
        assert_eq!(super::bucket_name("my handler"), "bus_inbox_my_handler");
    }
}
