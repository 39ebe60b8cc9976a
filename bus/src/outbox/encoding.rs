//! How a message is stored in its columns, and read back from them.
//!
//! `subject` and `reply` are TEXT, `payload` a BLOB, and `headers` JSON text: an array of
//! `[name, value]` pairs, `[["Bus-Msg-Id","7f3a…"],["X-Tenant","café"]]`. JSON keeps the
//! order and repeated names of [`Headers`], any Unicode (also NUL and control characters,
//! escaped), and is readable and queryable with the `sqlite3` shell's JSON functions, so an
//! operator can inspect a queue without this crate. `serde_json` writes and reads it.
//!
//! Reading never fails: a value that cannot be a message (invalid UTF-8, malformed JSON, a NULL,
//! a number where text belongs) gives a best-effort message plus the reason, and the caller
//! decides (the drainer dead-letters such a row; the read-only view shows it).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::broker::RawMessage;
use crate::headers::{known_name, Headers};

/// The headers as JSON: an array of `[name, value]` arrays, in order.
struct Pairs<'a>(&'a Headers);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// Appends `headers` as JSON text (`[[name,value],...]`) to `out`.
pub(crate) fn encode_headers(headers: &Headers, out: &mut Vec<u8>) {
    // Strings into memory: nothing can fail.
    let _ = serde_json::to_writer(out, &Pairs(headers));
}

/// Binds JSON text written by [`encode_headers`] as a TEXT value (it is UTF-8 by construction).
pub(crate) fn json_text(json: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(json))
}

/// A header name as read, one of ours without an allocation (see [`known_name`]).
struct Name(Cow<'static, str>);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                Ok(Name(known_name(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `[[name, value], ...]` read straight into [`Headers`].
struct Read(Headers);

impl<'de> Deserialize<'de> for Read {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Read;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of [name, value] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Read, A::Error> {
                let mut headers = Headers::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some((Name(name), value)) = seq.next_element::<(Name, String)>()? {
                    headers.append(name, value);
                }
                Ok(Read(headers))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The inverse of [`encode_headers`]. Accepts any JSON of that shape (white space, every
/// escape), as an operator's `json_set` may write it; refuses anything else with the reason.
pub(crate) fn decode_headers(text: &[u8]) -> Result<Headers, String> {
    let text = std::str::from_utf8(text).map_err(|e| not_utf8("headers are", &e, text))?;
    serde_json::from_str::<Read>(text)
        .map(|r| r.0)
        .map_err(|e| format!("headers are not a JSON array of [name, value] pairs: {e}"))
}

/// A message read back from its columns, and why it is not one if it is not.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The message; when `problem` is set, a best-effort one (lossy text, headers dropped).
    pub(crate) msg: RawMessage,
    /// Why the stored values are not a message that can be sent as it was queued.
    pub(crate) problem: Option<String>,
}

fn kind(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// Why `bytes` (what `what` names, e.g. `subject is`) are not text.
fn not_utf8(what: &str, e: &std::str::Utf8Error, bytes: &[u8]) -> String {
    let (at, len) = (e.valid_up_to(), bytes.len());
    format!("{what} not valid UTF-8 (at byte {at} of {len})")
}

/// Why `v` cannot be a payload (it is neither a blob nor text).
pub(crate) fn not_a_payload(v: &ValueRef<'_>) -> String {
    format!("payload is {}, not a blob", kind(v))
}

/// The UTF-8 of a TEXT (or BLOB) value; `column` names it in the reason.
fn text<'a>(v: ValueRef<'a>, column: &str) -> Result<&'a str, (String, Cow<'a, str>)> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => std::str::from_utf8(b).map_err(|e| {
            let why = not_utf8(&format!("{column} is"), &e, b);
            (why, String::from_utf8_lossy(b))
        }),
        other => Err((
            format!("{column} is {}, not text", kind(&other)),
            Cow::Borrowed(""),
        )),
    }
}

/// Reads a message from its four columns. Never fails: see [`Decoded`].
pub(crate) fn decode_columns(
    subject: ValueRef<'_>,
    reply: ValueRef<'_>,
    headers: ValueRef<'_>,
    payload: ValueRef<'_>,
) -> Decoded {
    let mut problem: Option<String> = None;
    let mut note = |p: String| {
        problem.get_or_insert(p);
    };
    let mut string = |v, column| match text(v, column) {
        Ok(s) => s.to_owned(),
        Err((why, lossy)) => {
            note(why);
            lossy.into_owned()
        }
    };
    let subject = string(subject, "subject");
    let reply = match reply {
        ValueRef::Null => None,
        v => Some(string(v, "reply")),
    };
    let headers = match headers {
        ValueRef::Text(b) | ValueRef::Blob(b) => decode_headers(b).unwrap_or_else(|why| {
            note(why);
            Headers::new()
        }),
        other => {
            note(format!("headers are {}, not JSON text", kind(&other)));
            Headers::new()
        }
    };
    let payload = match payload {
        ValueRef::Blob(b) | ValueRef::Text(b) => Bytes::copy_from_slice(b),
        other => {
            note(not_a_payload(&other));
            Bytes::new()
        }
    };
    Decoded {
        msg: RawMessage {
            subject,
            reply,
            headers,
            payload,
        },
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers;

    fn json(h: &Headers) -> String {
        let mut s = Vec::new();
        encode_headers(h, &mut s);
        String::from_utf8(s).unwrap()
    }

    fn round_trip(h: &Headers) -> Headers {
        let s = json(h);
        decode_headers(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn headers_round_trip_in_order_with_repeats_and_any_unicode() {
        let mut h = Headers::new();
        h.append(headers::MSG_ID, "0123abcd");
        h.append("X-Multi", "a");
        h.append("X-Multi", "b: \"quoted\" \\ back");
        h.append("X-Ctl", "nul\0 tab\t nl\n cr\r bell\u{7} del\u{7f}");
        h.append("X-Ünï", "café ☕ 日本 𝄞");
        h.append("", "");
        assert_eq!(round_trip(&h), h);
        assert_eq!(round_trip(&Headers::new()), Headers::new());
        let s = json(&h);
        assert!(
            !s.bytes().any(|b| b < 0x20),
            "control characters escaped: {s}"
        );
        assert!(s.contains("café ☕"), "readable as it is: {s}");
    }

    #[test]
    fn the_stored_text_is_what_earlier_versions_wrote() {
        let mut h = Headers::new();
        h.append(headers::MSG_ID, "0123abcd");
        h.append("X-Ctl", "q\" b\\ nul\0 t\t n\n r\r bell\u{7} del\u{7f} é");
        let text = "[[\"Nats-Msg-Id\",\"0123abcd\"],\
                    [\"X-Ctl\",\"q\\\" b\\\\ nul\\u0000 t\\t n\\n r\\r bell\\u0007 del\u{7f} é\"]]";
        assert_eq!(json(&h), text);
        assert_eq!(decode_headers(text.as_bytes()).unwrap(), h);
        // Backspace and form feed were written as `\u0008` and `\u000c`; both forms read alike.
        let old = decode_headers(br#"[["X","\u0008\u000c"]]"#).unwrap();
        assert_eq!(old, decode_headers(br#"[["X","\b\f"]]"#).unwrap());
        assert_eq!(old.get("X"), Some("\u{8}\u{c}"));
    }

    #[test]
    fn plain_and_escaped_text_read_the_same() {
        let plain = decode_headers(b" [ [\"X\" , \"v w\" ] , [\"Bus-Msg-Id\",\"\"]] ").unwrap();
        let escaped =
            decode_headers(b"[[\"\\u0058\",\"v\\u0020w\"],[\"Bus-Msg-Id\",\"\"]]").unwrap();
        assert_eq!(plain, escaped);
        assert_eq!(plain.get("X"), Some("v w"));
    }

    #[test]
    fn known_names_are_not_allocated() {
        let h = decode_headers(br#"[["Bus-Msg-Id","x"]]"#).unwrap();
        assert!(matches!(h.entries()[0].0, Cow::Borrowed(_)));
    }

    #[test]
    fn any_json_of_the_shape_is_read() {
        let h = decode_headers(
            b" [ [ \"A\" , \"\\u00e9\\ud834\\udd1e\\/\\b\\f\" ] ,\n[\"B\",\"\"] ] \n",
        )
        .unwrap();
        assert_eq!(h.get("A"), Some("é𝄞/\u{8}\u{c}"));
        assert_eq!(h.get("B"), Some(""));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        for (bad, why) in [
            (
                &b"[[\"X-\xc3\",\"v\"]]"[..],
                "not valid UTF-8 (at byte 5 of 13)",
            ),
            (b"", "EOF while parsing a value"),
            (b"[[\"a\",\"b\"]", "EOF while parsing a list"),
            (b"[[\"a\"]]", "invalid length 1"),
            (b"[[\"a\",\"b\",\"c\"]]", "trailing"),
            (b"[[\"a\",1]]", "expected a string"),
            (b"{\"a\":\"b\"}", "expected an array of [name, value] pairs"),
            (b"[[\"a\",\"b\"]] x", "trailing characters"),
            (b"[[\"a\",\"b\\q\"]]", "invalid escape"),
            (b"[[\"a\",\"\\ud834\"]]", "hex escape"),
            (b"[[\"a\",\"\\udd1e\"]]", "lone leading surrogate"),
            (b"[[\"a\",\"\\u12\"]]", "invalid escape"),
            (b"[[\"a\",\"line\nbreak\"]]", "control character"),
            (b"[[\"a\",\"open", "EOF while parsing a string"),
        ] {
            let err = decode_headers(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(
                err.starts_with("headers are not") && err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn columns_that_are_not_a_message_say_why_and_keep_what_they_can() {
        let (null, s, no_headers) = (ValueRef::Null, ValueRef::Text(b"s"), ValueRef::Text(b"[]"));
        let (empty, three) = (ValueRef::Blob(b""), ValueRef::Integer(3));
        let ok = decode_columns(
            ValueRef::Text(b"a.b"),
            null,
            no_headers,
            ValueRef::Blob(b"p"),
        );
        assert_eq!(ok.problem, None);
        assert_eq!(ok.msg, RawMessage::new("a.b", "p"));
        let bad = decode_columns(
            ValueRef::Blob(b"a.\xff"),
            three,
            ValueRef::Text(b"[["),
            null,
        );
        assert_eq!(
            bad.problem.as_deref(),
            Some("subject is not valid UTF-8 (at byte 2 of 3)")
        );
        assert_eq!(bad.msg.subject, "a.\u{fffd}");
        for (cols, why) in [
            ([s, three, no_headers, empty], "reply is an integer"),
            ([s, null, null, empty], "headers are NULL"),
            ([s, null, no_headers, null], "payload is NULL"),
            ([null, null, no_headers, empty], "subject is NULL"),
        ] {
            let [s, r, h, p] = cols;
            let d = decode_columns(s, r, h, p);
            assert!(
                d.problem.as_deref().unwrap_or("").contains(why),
                "{:?}",
                d.problem
            );
        }
    }
}
