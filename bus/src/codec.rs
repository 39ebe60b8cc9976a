//! The MessagePack codec: named fields, so other languages read the payload as a map.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Encodes `value` as MessagePack with named fields (`rmp_serde::to_vec_named`).
pub fn encode<T: Serialize>(value: &T, type_name: &'static str) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(128);
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())
        .map_err(|source| Error::Encode { type_name, source })?;
    Ok(Bytes::from(buf))
}

/// Decodes MessagePack into `T`; struct fields may be given as a map (named) or an array.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload)
}
