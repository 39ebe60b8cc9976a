//! How a message is stored in its columns, and read back from them.
//!
//! `subject` and `reply` are TEXT, `payload` a BLOB, and `headers` JSON text: an array of
//! `[name, value]` pairs, `[["Bus-Msg-Id","7f3a…"],["X-Tenant","café"]]`. JSON keeps the
//! order and repeated names of [`Headers`], any Unicode (also NUL and control characters,
//! escaped), and is readable and queryable with the `sqlite3` shell's JSON functions, so an
//! operator can inspect a queue without this crate. Both directions are hand-written: they run
//! once per message on the hot path, and the common header (an ASCII name, a hex id) needs no
//! escaping, so it is copied as it is.
//!
//! Reading never fails: a value that cannot be a message (invalid UTF-8, malformed JSON, a NULL,
//! a number where text belongs) gives a best-effort message plus the reason, and the caller
//! decides (the drainer dead-letters such a row; the read-only view shows it).

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use rusqlite::types::ValueRef;

use crate::broker::RawMessage;
use crate::headers::{Headers, KNOWN_NAMES};

/// Appends `headers` as JSON text (`[[name,value],...]`) to `out`.
pub(crate) fn encode_headers(headers: &Headers, out: &mut String) {
    out.reserve(
        2 + headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 8)
            .sum::<usize>(),
    );
    out.push('[');
    for (i, (name, value)) in headers.iter().enumerate() {
        out.push_str(if i == 0 { "[\"" } else { ",[\"" });
        // Our own names need no escaping and are the most common ones.
        if is_known(name) {
            out.push_str(name);
        } else {
            push_json_chars(name, out);
        }
        out.push_str("\",\"");
        push_json_chars(value, out);
        out.push_str("\"]");
    }
    out.push(']');
}

/// Whether `name` is one of [`KNOWN_NAMES`] itself, the constant (its address, not its text:
/// a copy is simply escaped-checked like any other name).
fn is_known(name: &str) -> bool {
    KNOWN_NAMES.iter().any(|k| std::ptr::eq(*k, name))
}

// Eight bytes at a time (SWAR): this runs over every header of every queued message, and its
// strings are short, which a byte loop or `memchr` handle slowly.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `v` below `n` (`n` at most 0x80). Exact for the lowest such
/// byte; a byte above it may be flagged too, which neither caller minds.
fn below(v: u64, n: u8) -> u64 {
    v.wrapping_sub(LO * n as u64) & !v & HI
}

/// The high bit of each byte of `v` equal to `b`, as exact as [`below`].
fn equal(v: u64, b: u8) -> u64 {
    below(v ^ (LO * b as u64), 1)
}

/// Whether `s` has a byte JSON must escape: `"`, `\` or a control character.
fn needs_escape(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if below(v, 0x20) | equal(v, b'"') | equal(v, b'\\') != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Whether `s` has a `\` or a control character (then JSON strings need the full parser).
fn has_backslash_or_control(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if below(v, 0x20) | equal(v, b'\\') != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'\\')
}

/// The position of the first `"` in `s`.
fn find_quote(s: &[u8]) -> Option<usize> {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let m = equal(v, b'"');
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"')
        .map(|p| at + p)
}

/// Appends `s` as the inside of a JSON string.
fn push_json_chars(s: &str, out: &mut String) {
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The name as a `'static` string when it is one of ours, so reading does not allocate it.
pub(crate) fn known_name(name: &str) -> Cow<'static, str> {
    for k in KNOWN_NAMES {
        if k == name {
            return Cow::Borrowed(k);
        }
    }
    Cow::Owned(name.to_owned())
}

/// The inverse of [`encode_headers`]. Accepts any JSON of that shape (white space, every
/// escape), as an operator's `json_set` may write it; refuses anything else with the reason.
pub(crate) fn decode_headers(text: &[u8]) -> Result<Headers, String> {
    let text = std::str::from_utf8(text).map_err(|e| {
        format!(
            "headers are not valid UTF-8 (at byte {} of {})",
            e.valid_up_to(),
            text.len()
        )
    })?;
    let mut p = Parser {
        s: text,
        at: 0,
        // Without a backslash or a control byte anywhere, every string ends at its next quote.
        plain: !has_backslash_or_control(text.as_bytes()),
        headers: Headers::with_capacity(2),
    };
    p.document().map_err(|e| {
        format!(
            "headers are not a JSON array of [name, value] pairs: {e} at byte {} of {}",
            p.at,
            text.len()
        )
    })?;
    Ok(p.headers)
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
    /// The text has no escape and no control byte (the common case).
    plain: bool,
    headers: Headers,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, want: u8) -> Result<(), &'static str> {
        self.skip_ws();
        if self.peek() == Some(want) {
            self.at += 1;
            Ok(())
        } else {
            Err(match want {
                b'[' => "expected `[`",
                b']' => "expected `]`",
                b',' => "expected `,`",
                _ => "unexpected character",
            })
        }
    }

    /// `[` (pair (`,` pair)*)? `]`, then only white space.
    fn document(&mut self) -> Result<(), &'static str> {
        self.expect(b'[')?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                self.expect(b'[')?;
                let name = self.string()?;
                self.expect(b',')?;
                let value = self.string()?;
                self.expect(b']')?;
                self.headers
                    .append(known_name(&name), Cow::Owned(value.into_owned()));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err("expected `,` or `]`"),
                }
            }
        }
        self.skip_ws();
        if self.at != self.s.len() {
            return Err("trailing characters");
        }
        Ok(())
    }

    fn string(&mut self) -> Result<Cow<'a, str>, &'static str> {
        let s: &'a str = self.s;
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err("expected a string");
        }
        self.at += 1;
        let start = self.at;
        if self.plain {
            let end = start + find_quote(&s.as_bytes()[start..]).ok_or("unterminated string")?;
            self.at = end + 1;
            return Ok(Cow::Borrowed(&s[start..end]));
        }
        let bytes = self.s.as_bytes();
        // No escape before the closing quote: borrow.
        while let Some(&b) = bytes.get(self.at) {
            match b {
                b'"' => {
                    self.at += 1;
                    return Ok(Cow::Borrowed(&s[start..self.at - 1]));
                }
                b'\\' => break,
                b if b < 0x20 => return Err("control character in a string"),
                _ => self.at += 1,
            }
        }
        let mut out = String::from(&self.s[start..self.at]);
        loop {
            let Some(&b) = bytes.get(self.at) else {
                return Err("unterminated string");
            };
            match b {
                b'"' => {
                    self.at += 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    self.at += 1;
                    let Some(&e) = bytes.get(self.at) else {
                        return Err("unterminated string");
                    };
                    self.at += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err("invalid escape"),
                    });
                }
                b if b < 0x20 => return Err("control character in a string"),
                _ => {
                    // Copy up to the next quote or backslash (the text is valid UTF-8, and
                    // both are ASCII, so the slice ends on a character boundary).
                    let run = bytes[self.at..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                        .unwrap_or(bytes.len() - self.at);
                    out.push_str(&self.s[self.at..self.at + run]);
                    self.at += run;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, &'static str> {
        let digits = self
            .s
            .get(self.at..self.at + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or("invalid \\u escape")?;
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|_| "invalid \\u escape")
    }

    /// After `\u`: one code point, or a surrogate pair `\uD8xx\uDCxx`.
    fn unicode_escape(&mut self) -> Result<char, &'static str> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.s.as_bytes().get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err("unpaired surrogate in a \\u escape");
                }
                self.at += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err("unpaired surrogate in a \\u escape");
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err("unpaired surrogate in a \\u escape"),
            c => c,
        };
        char::from_u32(code).ok_or("invalid \\u escape")
    }
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

/// Why `v` cannot be a payload (it is neither a blob nor text).
pub(crate) fn not_a_payload(v: &ValueRef<'_>) -> String {
    format!("payload is {}, not a blob", kind(v))
}

/// The UTF-8 of a TEXT (or BLOB) value; `column` names it in the reason.
fn text<'a>(v: ValueRef<'a>, column: &str) -> Result<&'a str, (String, Cow<'a, str>)> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => std::str::from_utf8(b).map_err(|e| {
            (
                format!(
                    "{column} is not valid UTF-8 (at byte {} of {})",
                    e.valid_up_to(),
                    b.len()
                ),
                String::from_utf8_lossy(b),
            )
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
    let subject = match text(subject, "subject") {
        Ok(s) => s.to_owned(),
        Err((why, lossy)) => {
            note(why);
            lossy.into_owned()
        }
    };
    let reply = match reply {
        ValueRef::Null => None,
        v => match text(v, "reply") {
            Ok(s) => Some(s.to_owned()),
            Err((why, lossy)) => {
                note(why);
                Some(lossy.into_owned())
            }
        },
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

    fn round_trip(h: &Headers) -> Headers {
        let mut s = String::new();
        encode_headers(h, &mut s);
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
        let mut s = String::new();
        encode_headers(&h, &mut s);
        assert!(
            !s.bytes().any(|b| b < 0x20),
            "control characters escaped: {s}"
        );
        assert!(s.contains("café ☕"), "readable as it is: {s}");
    }

    #[test]
    fn the_word_at_a_time_scans_agree_with_a_byte_loop() {
        for len in 0..24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    if b == b'a' {
                        continue;
                    }
                    let naive_escape = s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(needs_escape(&s), naive_escape, "{s:?}");
                    let naive_bc = s.iter().any(|&c| c < 0x20 || c == b'\\');
                    assert_eq!(has_backslash_or_control(&s), naive_bc, "{s:?}");
                    let naive_quote = s.iter().position(|&c| c == b'"');
                    assert_eq!(find_quote(&s), naive_quote, "{s:?}");
                    // A second match after the first does not move the first.
                    s.push(b'"');
                    assert_eq!(find_quote(&s), naive_quote.or(Some(len)), "{s:?}");
                }
            }
        }
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
            (&b"[[\"X-\xc3\",\"v\"]]"[..], "not valid UTF-8"),
            (b"", "expected `[`"),
            (b"[[\"a\",\"b\"]", "expected `,` or `]`"),
            (b"[[\"a\"]]", "expected `,`"),
            (b"[[\"a\",1]]", "expected a string"),
            (b"{\"a\":\"b\"}", "expected `[`"),
            (b"[[\"a\",\"b\"]] x", "trailing"),
            (b"[[\"a\",\"b\\q\"]]", "invalid escape"),
            (b"[[\"a\",\"\\ud834\"]]", "unpaired surrogate"),
            (b"[[\"a\",\"\\udd1e\"]]", "unpaired surrogate"),
            (b"[[\"a\",\"\\u12\"]]", "\\u escape"),
            (b"[[\"a\",\"\\u+123\"]]", "invalid \\u escape"),
            (b"[[\"a\",\"line\nbreak\"]]", "control character"),
            (b"[[\"a\",\"open", "unterminated"),
        ] {
            let err = decode_headers(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn columns_that_are_not_a_message_say_why_and_keep_what_they_can() {
        let ok = decode_columns(
            ValueRef::Text(b"a.b"),
            ValueRef::Null,
            ValueRef::Text(b"[]"),
            ValueRef::Blob(b"p"),
        );
        assert_eq!(ok.problem, None);
        assert_eq!(ok.msg, RawMessage::new("a.b", "p"));
        let bad = decode_columns(
            ValueRef::Blob(b"a.\xff"),
            ValueRef::Integer(3),
            ValueRef::Text(b"[["),
            ValueRef::Null,
        );
        assert_eq!(
            bad.problem.as_deref(),
            Some("subject is not valid UTF-8 (at byte 2 of 3)")
        );
        assert_eq!(bad.msg.subject, "a.\u{fffd}");
        for (cols, why) in [
            (
                [
                    ValueRef::Text(b"s"),
                    ValueRef::Integer(3),
                    ValueRef::Text(b"[]"),
                    ValueRef::Blob(b""),
                ],
                "reply is an integer",
            ),
            (
                [
                    ValueRef::Text(b"s"),
                    ValueRef::Null,
                    ValueRef::Null,
                    ValueRef::Blob(b""),
                ],
                "headers are NULL",
            ),
            (
                [
                    ValueRef::Text(b"s"),
                    ValueRef::Null,
                    ValueRef::Text(b"[]"),
                    ValueRef::Null,
                ],
                "payload is NULL",
            ),
            (
                [
                    ValueRef::Null,
                    ValueRef::Null,
                    ValueRef::Text(b"[]"),
                    ValueRef::Blob(b""),
                ],
                "subject is NULL",
            ),
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
