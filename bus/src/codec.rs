//! The MessagePack codec: named fields, so other languages read the payload as a map.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// The size of the per-thread blocks payloads are encoded into.
const BLOCK: usize = 16 * 1024;

/// Below this much room left in the block, a new block is started before encoding.
const MIN_ROOM: usize = 512;

thread_local! {
    /// Payloads are encoded into a shared block and split off it: one allocation per block
    /// instead of one per message, and the `Bytes` they become clone by a reference count.
    /// (A `Bytes` made from a `Vec` allocates again on its first clone, which async-nats makes
    /// of every payload it sends.) A block is freed when the last payload in it is dropped, so
    /// a payload kept for long keeps at most one block alive.
    static BLOCKS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Encodes `value` as MessagePack with named fields (`rmp_serde::to_vec_named`).
pub fn encode<T: Serialize>(value: &T, type_name: &'static str) -> Result<Bytes> {
    let encoded = BLOCKS.with(|blocks| match blocks.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.capacity() - buf.len() < MIN_ROOM {
                // The old block lives on in the payloads split off it.
                *buf = BytesMut::with_capacity(BLOCK);
            }
            let written = value
                .serialize(&mut rmp_serde::Serializer::new((&mut *buf).writer()).with_struct_map());
            match written {
                Ok(()) => Ok(buf.split().freeze()),
                Err(e) => {
                    buf.clear();
                    Err(e)
                }
            }
        }
        // A `Serialize` impl that publishes while it is being encoded: encode on the side.
        Err(_) => {
            let mut buf = Vec::with_capacity(128);
            value
                .serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())
                .map(|()| Bytes::from(buf))
        }
    });
    encoded.map_err(|source| Error::Encode { type_name, source })
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
