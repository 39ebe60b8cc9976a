//! `bus` types <-> async-nats types, kept allocation-lean: both sit on the hot path.

use std::borrow::Cow;
use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};

use crate::broker::RawMessage;
use crate::error::{Error, Result};
use crate::headers::{self as names, Headers};

/// `Headers` -> `HeaderMap`, keeping every value of a multi-valued name in order. Refuses names
/// and values NATS cannot carry ([`Headers::check`]'s rule), which async-nats would otherwise
/// put on the wire and corrupt the protocol.
///
/// Per message on the publish path, so: a `&'static` name (every name `bus` sends, and your
/// literals) becomes a `HeaderName` without a copy, and a name not seen before in these headers
/// is `insert`ed (one hash) rather than `append`ed (a lookup, then an insert).
pub(crate) fn to_header_map(headers: &Headers) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    let entries = headers.entries();
    for (i, (name, value)) in entries.iter().enumerate() {
        let n = header_name(name)?;
        if let Some(reason) = names::value_problem(value) {
            return Err(invalid(name, reason));
        }
        let v = HeaderValue::from(value.as_ref());
        if entries[..i].iter().any(|(earlier, _)| earlier == name) {
            map.append(n, v);
        } else {
            map.insert(n, v);
        }
    }
    Ok(map)
}

// The `Cow` itself is the point: its variant decides whether the name is copied.
#[allow(clippy::ptr_arg)]
fn header_name(name: &Cow<'static, str>) -> Result<HeaderName> {
    // async-nats's `from_str` rule (printable ASCII but `:`) on bytes, so that a non-ASCII
    // character (which that rule truncates to its low byte) and an empty name are refused too;
    // `from_static` checks nothing.
    if let Some(reason) = names::name_problem(name) {
        return Err(invalid(name, reason));
    }
    Ok(match name {
        Cow::Borrowed(name) => HeaderName::from_static(name),
        Cow::Owned(name) => HeaderName::from_str(name)
            .map_err(|_| invalid(name, "async-nats refused the header name"))?,
    })
}

fn invalid(name: &str, reason: &'static str) -> Error {
    Error::InvalidHeader {
        name: name.to_owned(),
        reason,
    }
}

/// `HeaderMap` -> `Headers`. Names keep their order per name; the order across names is the
/// map's (NATS gives no meaning to it).
pub(crate) fn from_header_map(map: &HeaderMap) -> Headers {
    let mut headers = Headers::with_capacity(map.iter().map(|(_, v)| v.len()).sum());
    for (name, values) in map.iter() {
        let name = names::known_name(name.as_ref());
        for value in values {
            let value: Cow<'static, str> = match value.as_str() {
                names::MSGPACK => Cow::Borrowed(names::MSGPACK),
                other => Cow::Owned(other.to_owned()),
            };
            headers.append(name.clone(), value);
        }
    }
    headers
}

/// An async-nats message as a `RawMessage`.
pub(crate) fn from_nats(msg: async_nats::Message) -> RawMessage {
    RawMessage {
        subject: msg.subject.into_string(),
        reply: msg.reply.map(async_nats::Subject::into_string),
        headers: match &msg.headers {
            Some(map) if !map.is_empty() => from_header_map(map),
            _ => Headers::new(),
        },
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
    fn known_names_and_values_come_back_without_a_copy() {
        let mut h = Headers::new();
        h.insert(names::CONTENT_TYPE, names::MSGPACK);
        h.insert("Custom".to_owned(), "x".to_owned());
        let back = from_header_map(&to_header_map(&h).unwrap());
        let entries = back.entries();
        let ct = entries
            .iter()
            .find(|(n, _)| n == names::CONTENT_TYPE)
            .unwrap();
        assert!(matches!(ct, (Cow::Borrowed(_), Cow::Borrowed(_))));
        assert_eq!(back.get("Custom"), Some("x"));
    }

    #[test]
    fn refuses_headers_nats_cannot_carry() {
        let refused = |name: Cow<'static, str>, value: &'static str| {
            let mut h = Headers::new();
            h.insert(name, value);
            matches!(to_header_map(&h), Err(Error::InvalidHeader { .. }))
        };
        assert!(refused("Bad Name".into(), "v"));
        assert!(refused("Name".into(), "a\r\nPUB x 1"));
        // Owned names go through async-nats's own check, static ones through ours: same rule.
        for bad in ["", "a:b", "a b", "a\u{7f}", "\u{e9}", "\u{141}"] {
            assert!(refused(Cow::Borrowed(bad), "v"), "{bad:?}");
            assert!(refused(Cow::Owned(bad.to_owned()), "v"), "{bad:?}");
        }
    }
}
