//! `bus` types <-> async-nats types, kept allocation-lean: both sit on the hot path.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::broker::RawMessage;
use crate::{Error, Headers, Result};

/// `Headers` -> `HeaderMap`, keeping every value of a multi-valued name in order. Refuses names
/// and values NATS cannot carry (a `:`, a control character or white space in a name; CR or LF
/// in a value), which async-nats would otherwise put on the wire and corrupt the protocol.
pub(crate) fn to_header_map(headers: &Headers) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers.iter() {
        let n = HeaderName::from_str(name).map_err(|e| Error::Config(format!(
            "header name {name:?} cannot be sent over NATS ({e}); use printable ASCII without ':' or spaces"
        )))?;
        let v = HeaderValue::from_str(value).map_err(|e| {
            Error::Config(format!(
                "value of header {name:?} cannot be sent over NATS ({e}); remove CR/LF"
            ))
        })?;
        map.append(n, v);
    }
    Ok(map)
}

/// `HeaderMap` -> `Headers`. Names keep their order per name; the order across names is the
/// map's (NATS gives no meaning to it).
pub(crate) fn from_header_map(map: &HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        for value in values {
            headers.append(name.to_owned(), value.as_str());
        }
    }
    headers
}

/// An async-nats message as a `RawMessage`.
pub(crate) fn from_nats(msg: async_nats::Message) -> RawMessage {
    RawMessage {
        subject: msg.subject.as_str().to_owned(),
        reply: msg.reply.map(|r| r.as_str().to_owned()),
        headers: msg
            .headers
            .as_ref()
            .map(from_header_map)
            .unwrap_or_default(),
        payload: msg.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_multiple_values() {
        let mut h = Headers::new();
        h.insert("Bus-Msg-Id", "abc");
        h.append("Tag", "one");
        h.append("Tag", "two");
        let back = from_header_map(&to_header_map(&h).unwrap());
        assert_eq!(back.get("Bus-Msg-Id"), Some("abc"));
        assert_eq!(back.get_all("Tag").collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(back.len(), 3);
    }

    #[test]
    fn refuses_headers_nats_cannot_carry() {
        let mut h = Headers::new();
        h.insert("Bad Name", "v");
        assert!(matches!(to_header_map(&h), Err(Error::Config(_))));
        let mut h = Headers::new();
        h.insert("Name", "a\r\nPUB x 1");
        assert!(matches!(to_header_map(&h), Err(Error::Config(_))));
    }
}
