//! The MessagePack codec: named fields, so other languages read the payload as a map.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The size of the per-thread blocks payloads are copied into.
const BLOCK: usize = 16 * 1024;

/// The starting size of the scratch buffer.
const SCRATCH: usize = 512;

/// Per thread: a scratch `Vec` to encode into (rmp writes a byte at a time, which a `Vec` does
/// fastest), and the block the finished payloads are copied into.
struct Buffers {
    scratch: Vec<u8>,
    block: BytesMut,
}

thread_local! {
    /// Payloads are copied into a shared block and split off it: one allocation per block
    /// instead of one per message, and the `Bytes` they become clone by a reference count.
    /// (A `Bytes` made from a `Vec` allocates again on its first clone, which async-nats makes
    /// of every payload it sends.) A block is freed when the last payload in it is dropped, so
    /// a payload kept for long keeps at most one block alive.
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers {
        scratch: Vec::with_capacity(SCRATCH),
        block: BytesMut::new(),
    });
}

/// Encodes `value` as MessagePack with named fields (`rmp_serde::to_vec_named`).
pub fn encode<T: Serialize>(value: &T, type_name: &'static str) -> Result<Bytes> {
    let encoded = BUFFERS.with(|buffers| match buffers.try_borrow_mut() {
        Ok(mut buffers) => {
            let Buffers { scratch, block } = &mut *buffers;
            scratch.clear();
            value.serialize(&mut rmp_serde::Serializer::new(&mut *scratch).with_struct_map())?;
            let payload = copy_into(block, scratch);
            if scratch.capacity() > BLOCK {
                // An unusually large payload does not keep its memory.
                *scratch = Vec::with_capacity(SCRATCH);
            }
            Ok(payload)
        }
        // A `Serialize` impl that publishes while it is being encoded: encode on the side.
        Err(_) => {
            let mut buf = Vec::with_capacity(128);
            value
                .serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())
                .map(|()| Bytes::from(buf))
        }
    });
    encoded.map_err(|source| Error::Encode {
        type_name,
        source: Box::new(source),
    })
}

/// `bytes` split off the current block.
fn copy_into(block: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if block.capacity() < bytes.len() {
        // The old block lives on in the payloads split off it.
        *block = BytesMut::with_capacity(BLOCK.max(bytes.len()));
    }
    block.extend_from_slice(bytes);
    block.split().freeze()
}

/// Decodes MessagePack into `T`; struct fields may be given as a map (named) or an array.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct M {
        name: String,
        n: u32,
    }

    #[test]
    fn payloads_are_independent_and_named() {
        let a = encode(
            &M {
                name: "a".into(),
                n: 1,
            },
            "M",
        )
        .unwrap();
        let big = "x".repeat(3 * BLOCK);
        let b = encode(
            &M {
                name: big.clone(),
                n: 2,
            },
            "M",
        )
        .unwrap();
        let c = encode(
            &M {
                name: "c".into(),
                n: 3,
            },
            "M",
        )
        .unwrap();
        assert_eq!(
            a,
            rmp_serde::to_vec_named(&M {
                name: "a".into(),
                n: 1
            })
            .unwrap()
        );
        assert_eq!(decode::<M>(&b).unwrap(), M { name: big, n: 2 });
        assert_eq!(
            decode::<M>(&c).unwrap(),
            M {
                name: "c".into(),
                n: 3
            }
        );
        assert_eq!(
            decode::<M>(&a).unwrap(),
            M {
                name: "a".into(),
                n: 1
            }
        );
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        struct Fails;
        impl serde::Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error as _, SerializeMap};
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("half", "written")?;
                Err(S::Error::custom("no"))
            }
        }
        assert!(matches!(encode(&Fails, "Fails"), Err(Error::Encode { .. })));
        let next = encode(
            &M {
                name: "ok".into(),
                n: 0,
            },
            "M",
        )
        .unwrap();
        assert_eq!(
            decode::<M>(&next).unwrap(),
            M {
                name: "ok".into(),
                n: 0
            }
        );
    }
}
