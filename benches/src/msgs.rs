//! The message types both sides carry, and their 128-byte encoding.

use bytes::{Bytes, BytesMut};

/// The messages are the test suite's (`bus_tests::msgs`): the README's `Outbound`, and the
/// `Delegate` request with its `RouteReply`.
pub use bus_tests::msgs::{Delegate, Outbound, RouteReply};

/// The body size of the pub/sub scenarios.
pub const PAYLOAD_BYTES: usize = 128;
/// The channel every measured message goes to.
pub const CHANNEL: &str = "bench";
/// The instance of measured messages.
pub const INSTANCE: &str = "i0";
/// The instance of warm-up probes (same pattern, told apart by the subscriber).
pub const WARM: &str = "warm";
/// The subject of measured messages: what the derive makes of `CHANNEL` and `INSTANCE`.
pub const SUBJECT: &str = "plugin.outbound.bench.i0";
/// The subject of probes.
pub const WARM_SUBJECT: &str = "plugin.outbound.bench.warm";
/// The pattern subscribers use (`Outbound::filter().channel(CHANNEL)`).
pub const PATTERN: &str = "plugin.outbound.bench.*";
/// The subject of requests.
pub const REQUEST_SUBJECT: &str = "agent.route.bench";

/// An [`Outbound`] on `instance` whose MessagePack body is [`PAYLOAD_BYTES`] long (for the
/// measured instance; a probe is a few bytes longer or shorter, which does not matter).
pub fn outbound(instance: &str) -> Outbound {
    // fixmap(3) + "channel" + "bench" + "instance" + "i0" + "text" = 32 bytes; the text is a
    // str8 (2-byte header) of the rest.
    let text_len = PAYLOAD_BYTES - 32 - 2;
    Outbound {
        channel: CHANNEL.into(),
        instance: instance.into(),
        text: "x".repeat(text_len),
    }
}

/// The encoded body of [`outbound`]`(INSTANCE)`: the bytes the raw baselines send.
pub fn outbound_bytes() -> Bytes {
    let bytes = rmp_serde::to_vec_named(&outbound(INSTANCE)).expect("a plain struct encodes");
    assert_eq!(bytes.len(), PAYLOAD_BYTES, "payload sizing drifted");
    Bytes::from(bytes)
}

/// The request every side sends.
pub fn delegate() -> Delegate {
    Delegate {
        agent: "bench".into(),
        task: "summarise the thread".into(),
    }
}

/// MessagePack encoding as a careful engineer writes it by hand: one scratch `Vec` reused for
/// every message (rmp writes a byte at a time, which a `Vec` does fastest), then one copy into a
/// reused `BytesMut` that each payload is split off, so a payload costs one copy and a fraction of
/// an allocation, and clones by a reference count. This is what the honest baselines use.
#[derive(Debug, Default)]
pub struct HandEncoder {
    scratch: Vec<u8>,
    block: BytesMut,
}

impl HandEncoder {
    /// Blocks of 16 KiB: about 128 payloads of the bench's size per allocation.
    const BLOCK: usize = 16 * 1024;

    /// An encoder with its buffers allocated.
    pub fn new() -> HandEncoder {
        HandEncoder {
            scratch: Vec::with_capacity(512),
            block: BytesMut::with_capacity(Self::BLOCK),
        }
    }

    /// `value` as MessagePack with named fields (the bytes of `rmp_serde::to_vec_named`).
    pub fn encode<T: serde::Serialize>(
        &mut self,
        value: &T,
    ) -> Result<Bytes, rmp_serde::encode::Error> {
        self.scratch.clear();
        value.serialize(&mut rmp_serde::Serializer::new(&mut self.scratch).with_struct_map())?;
        if self.block.capacity() < self.scratch.len() {
            self.block = BytesMut::with_capacity(Self::BLOCK.max(self.scratch.len()));
        }
        self.block.extend_from_slice(&self.scratch);
        Ok(self.block.split().freeze())
    }
}

/// The subject of `msg`, built from the struct's fields as a hand-written publisher does: one
/// `String` of the exact size (async-nats takes the subject by value, so it cannot be reused).
pub fn outbound_subject(msg: &Outbound) -> String {
    const PREFIX: &str = "plugin.outbound.";
    let mut out = String::with_capacity(PREFIX.len() + msg.channel.len() + 1 + msg.instance.len());
    out.push_str(PREFIX);
    out.push_str(&msg.channel);
    out.push('.');
    out.push_str(&msg.instance);
    out
}
