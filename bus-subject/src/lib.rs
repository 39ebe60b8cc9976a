//! The one subject grammar of `bus`.
//!
//! Both the runtime crate (`bus`) and the derive macro (`bus-macros`) depend on this crate, so the
//! rules a template is checked against at compile time and the rules a placeholder value is checked
//! against at run time cannot drift apart. It has no dependencies.
//!
//! A subject is a sequence of dot-separated NATS tokens. A *template* (what `#[subject("…")]`
//! holds) starts with one of the five [`ROOTS`], has at least one token after it, and every later
//! token is a literal made of `[A-Za-z0-9_-]` or a placeholder `<field>`.
//!
//! ```
//! use bus_subject::{parse_template, Segment};
//!
//! let t = parse_template("plugin.outbound.<channel>.<instance>").unwrap();
//! assert_eq!(t.root, "plugin.outbound");
//! assert_eq!(t.placeholders().collect::<Vec<_>>(), ["channel", "instance"]);
//! assert!(matches!(t.segments[2], Segment::Placeholder("channel")));
//!
//! let errors = parse_template("plugin.outbond.<channel>").unwrap_err();
//! assert_eq!(errors[0].hint(), "did you mean `plugin.outbound`?");
//! ```

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

/// The five subject roots the decision record allows (`docs/adr/0002-nats-broker.md`, "Decision"). A template's first two tokens must be one of them.
pub const ROOTS: [&str; 5] = [
    "plugin.inbound",
    "plugin.outbound",
    "plugin.health",
    "agent.events",
    "agent.route",
];

/// The characters allowed in a literal token of a template, for error messages.
pub const ALLOWED_CHARS: &str = "ASCII letters, digits, `_` and `-`";

/// One dot-separated piece of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A literal token, copied as is into every subject.
    Literal(&'a str),
    /// A placeholder `<name>`, filled from the field `name` of the message.
    Placeholder(&'a str),
}

/// A template that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'a> {
    /// The root (first two tokens), one of [`ROOTS`].
    pub root: &'static str,
    /// Every token of the template, the two root tokens included, in order.
    pub segments: Vec<Segment<'a>>,
}

impl<'a> Template<'a> {
    /// The placeholder names, in the order they appear.
    pub fn placeholders(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Placeholder(p) => Some(*p),
            Segment::Literal(_) => None,
        })
    }
}

/// What is wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateErrorKind {
    /// The template is empty.
    Empty,
    /// The first two tokens are not one of [`ROOTS`].
    UnknownRoot {
        /// What was written in place of the root.
        found: String,
        /// The nearest allowed root, if one is close.
        suggestion: Option<&'static str>,
    },
    /// The root has no token after it.
    NothingAfterRoot {
        /// The root that was written.
        root: &'static str,
    },
    /// Two dots in a row, or a leading or trailing dot.
    EmptyToken,
    /// `*` or `>` in a template: a template names one subject, filters add wildcards.
    Wildcard {
        /// The token holding the wildcard.
        token: String,
    },
    /// A character outside [`ALLOWED_CHARS`].
    InvalidChar {
        /// The token holding it.
        token: String,
        /// The character.
        ch: char,
    },
    /// Something that looks like a placeholder but is not `<ident>` as a whole token.
    MalformedPlaceholder {
        /// The token.
        token: String,
    },
    /// The same placeholder appears twice.
    DuplicatePlaceholder {
        /// Its name.
        name: String,
    },
}

/// One problem in a template, with where it is (a byte range of the template string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// What is wrong.
    pub kind: TemplateErrorKind,
    /// The byte range of the offending part of the template.
    pub span: Range<usize>,
}

impl TemplateError {
    /// A one-line description of the problem.
    pub fn message(&self) -> String {
        match &self.kind {
            TemplateErrorKind::Empty => "subject template is empty".to_string(),
            TemplateErrorKind::UnknownRoot { found, .. } => {
                format!("unknown subject root `{found}`")
            }
            TemplateErrorKind::NothingAfterRoot { root } => {
                format!("subject root `{root}` must be followed by at least one token")
            }
            TemplateErrorKind::EmptyToken => "empty token in subject template".to_string(),
            TemplateErrorKind::Wildcard { token } => {
                format!("wildcard `{token}` is not allowed in a subject template")
            }
            TemplateErrorKind::InvalidChar { token, ch } => {
                format!("invalid character {ch:?} in subject token `{token}`")
            }
            TemplateErrorKind::MalformedPlaceholder { token } => {
                format!("malformed placeholder `{token}`")
            }
            TemplateErrorKind::DuplicatePlaceholder { name } => {
                format!("placeholder `<{name}>` is used twice")
            }
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match &self.kind {
            TemplateErrorKind::Empty => format!(
                "write a subject such as \"plugin.outbound.<channel>\"; roots are {}",
                roots_list()
            ),
            TemplateErrorKind::UnknownRoot {
                suggestion: Some(s),
                ..
            } => format!("did you mean `{s}`?"),
            TemplateErrorKind::UnknownRoot {
                suggestion: None, ..
            } => format!(
                "a subject starts with one of {} (case matters)",
                roots_list()
            ),
            TemplateErrorKind::NothingAfterRoot { root } => {
                format!("add a token or placeholder, e.g. \"{root}.<instance>\"")
            }
            TemplateErrorKind::EmptyToken => {
                "remove the extra `.`: tokens are separated by exactly one dot".to_string()
            }
            TemplateErrorKind::Wildcard { .. } => {
                "use a placeholder such as `<instance>`; leave it unset in the filter to subscribe to every value".to_string()
            }
            TemplateErrorKind::InvalidChar { .. } => {
                format!("a literal token may contain only {ALLOWED_CHARS}")
            }
            TemplateErrorKind::MalformedPlaceholder { .. } => {
                "a placeholder is a whole token `<field>` naming a field of the struct, e.g. `plugin.outbound.<channel>`".to_string()
            }
            TemplateErrorKind::DuplicatePlaceholder { .. } => {
                "each placeholder may appear once; rename one of them".to_string()
            }
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message(), self.hint())
    }
}

impl std::error::Error for TemplateError {}

/// The five roots, formatted for error messages: `` `plugin.inbound`, `plugin.outbound`, … ``.
pub fn roots_list() -> String {
    ROOTS
        .iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a template against every rule and splits it into segments.
///
/// Independent problems are all reported, in order of appearance.
pub fn parse_template(template: &str) -> Result<Template<'_>, Vec<TemplateError>> {
    if template.is_empty() {
        return Err(vec![TemplateError {
            kind: TemplateErrorKind::Empty,
            span: 0..0,
        }]);
    }
    let mut errors = Vec::new();
    let tokens = split_with_offsets(template);

    // The root: the first two tokens joined.
    let root_end = tokens
        .get(1)
        .map_or(template.len(), |(off, t)| off + t.len());
    let written_root = &template[..root_end];
    let root = ROOTS.iter().copied().find(|r| *r == written_root);
    match root {
        None => errors.push(TemplateError {
            kind: TemplateErrorKind::UnknownRoot {
                found: written_root.to_string(),
                suggestion: nearest(written_root, ROOTS.iter().copied()),
            },
            span: 0..root_end,
        }),
        Some(r) if tokens.len() == 2 => errors.push(TemplateError {
            kind: TemplateErrorKind::NothingAfterRoot { root: r },
            span: 0..root_end,
        }),
        Some(_) => {}
    }

    let mut segments = Vec::with_capacity(tokens.len());
    let mut seen: Vec<&str> = Vec::new();
    for (i, &(off, token)) in tokens.iter().enumerate() {
        let span = off..off + token.len();
        let err = |kind| TemplateError {
            kind,
            span: span.clone(),
        };
        if token.is_empty() {
            errors.push(err(TemplateErrorKind::EmptyToken));
            continue;
        }
        if i < 2 {
            // Root tokens were checked as a whole above.
            segments.push(Segment::Literal(token));
            continue;
        }
        if token.contains('*') || (token.contains('>') && !token.contains('<')) {
            errors.push(err(TemplateErrorKind::Wildcard {
                token: token.to_string(),
            }));
            continue;
        }
        if token.contains('<') || token.contains('>') {
            match placeholder_name(token) {
                Some(name) => {
                    if seen.contains(&name) {
                        errors.push(err(TemplateErrorKind::DuplicatePlaceholder {
                            name: name.to_string(),
                        }));
                    } else {
                        seen.push(name);
                    }
                    segments.push(Segment::Placeholder(name));
                }
                None => errors.push(err(TemplateErrorKind::MalformedPlaceholder {
                    token: token.to_string(),
                })),
            }
            continue;
        }
        if let Some(ch) = token.chars().find(|c| !is_literal_char(*c)) {
            errors.push(err(TemplateErrorKind::InvalidChar {
                token: token.to_string(),
                ch,
            }));
            continue;
        }
        segments.push(Segment::Literal(token));
    }

    match (root, errors.is_empty()) {
        (Some(root), true) => Ok(Template { root, segments }),
        _ => Err(errors),
    }
}

fn split_with_offsets(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '.' {
            out.push((start, &s[start..i]));
            start = i + 1;
        }
    }
    out.push((start, &s[start..]));
    out
}

fn placeholder_name(token: &str) -> Option<&str> {
    let name = token.strip_prefix('<')?.strip_suffix('>')?;
    is_ident(name).then_some(name)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Whether `c` may appear in a literal template token.
pub fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Why a run-time placeholder value is not a safe single token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The value is empty.
    Empty,
    /// The value contains `.`, which would split it into several tokens.
    Dot,
    /// The value contains `*` or `>`, which would widen a subscription.
    Wildcard,
    /// The value contains white space, which NATS uses as a protocol separator.
    Whitespace,
    /// The value contains a control character.
    Control,
    /// The value is longer than [`MAX_SUBJECT_LEN`]: no subject holding it could be sent.
    TooLong,
}

/// The longest subject (or subscription pattern plus queue group) `bus` sends, in bytes.
///
/// nats-server closes the connection of a client whose protocol line exceeds its
/// `max_control_line` (4,096 bytes by default; the server's INFO does not advertise it), and
/// async-nats then reconnects and sends the same line again. A publish line carries the subject,
/// a reply subject (an inbox, about 50 bytes) and two lengths (`HPUB <subject> <reply> <hdr>
/// <total>`); a subscription line the pattern, the queue group and an id. This limit keeps 256
/// bytes of the 4,096 for all of that, so a subject within it is always sent.
pub const MAX_SUBJECT_LEN: usize = 3_840;

impl TokenError {
    /// A short reason, for error messages.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Empty => "it is empty",
            TokenError::Dot => "it contains `.`, which would split it into several tokens",
            TokenError::Wildcard => "it contains a wildcard (`*` or `>`)",
            TokenError::Whitespace => "it contains white space",
            TokenError::Control => "it contains a control character",
            TokenError::TooLong => {
                "it is longer than 3,840 bytes (MAX_SUBJECT_LEN), over what NATS can carry in a subject"
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for TokenError {}

/// Checks that a run-time value is exactly one safe subject token.
///
/// ```
/// use bus_subject::{check_token, TokenError};
/// assert!(check_token("slack-a_1").is_ok());
/// assert_eq!(check_token("a.b"), Err(TokenError::Dot));
/// assert_eq!(check_token(">"), Err(TokenError::Wildcard));
/// assert_eq!(check_token(""), Err(TokenError::Empty));
/// ```
pub fn check_token(value: &str) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::Empty);
    }
    if value.len() > MAX_SUBJECT_LEN {
        return Err(TokenError::TooLong);
    }
    // Fast path: the common case is short ASCII made of safe characters.
    if value.bytes().all(|b| PLAIN[b as usize]) {
        return Ok(());
    }
    for c in value.chars() {
        match c {
            '.' => return Err(TokenError::Dot),
            '*' | '>' => return Err(TokenError::Wildcard),
            c if c.is_whitespace() => return Err(TokenError::Whitespace),
            c if c.is_control() => return Err(TokenError::Control),
            _ => {}
        }
    }
    Ok(())
}

/// Why a subject or subscription pattern is not valid NATS syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    /// Empty subject, or an empty token (`a..b`, leading or trailing `.`).
    EmptyToken,
    /// White space or a control character.
    Whitespace,
    /// A wildcard in a publish subject.
    WildcardInSubject,
    /// `>` not as the last token, or a wildcard inside a longer token.
    MisplacedWildcard,
    /// Longer than [`MAX_SUBJECT_LEN`] bytes.
    TooLong,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternError::EmptyToken => "empty token",
            PatternError::Whitespace => "white space or control character",
            PatternError::WildcardInSubject => "wildcards are only allowed in subscriptions",
            PatternError::MisplacedWildcard => {
                "`*` and `>` must be whole tokens and `>` must be the last token"
            }
            PatternError::TooLong => {
                "longer than 3,840 bytes (MAX_SUBJECT_LEN): nats-server would close the connection"
            }
        })
    }
}

impl std::error::Error for PatternError {}

/// The bytes of a plain token: ASCII letters, digits, `_` and `-`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    t
};

/// This runs on every publish, so the common case (tokens of [`PLAIN`] bytes) is one pass with
/// a table lookup per byte; anything else (wildcards, other characters, errors) takes
/// [`check_tokens_chars`], the rules as written.
fn check_tokens(s: &str, allow_wildcards: bool) -> Result<(), PatternError> {
    if s.len() > MAX_SUBJECT_LEN {
        return Err(PatternError::TooLong);
    }
    // Branch-free: accumulate "not plain" and "dot after dot" over all bytes, decide once.
    let mut odd = 0u8;
    let mut prev = DOT;
    for &b in s.as_bytes() {
        let class = CLASS[b as usize];
        odd |= (class & OTHER) | (class & prev);
        prev = class;
    }
    if odd != 0 {
        return check_tokens_chars(s, allow_wildcards);
    }
    if prev == DOT {
        // Empty, or a trailing dot.
        return Err(PatternError::EmptyToken);
    }
    Ok(())
}

const DOT: u8 = 1;
const OTHER: u8 = 2;

/// Each byte's class for [`check_tokens`]: 0 (a [`PLAIN`] byte), [`DOT`] or [`OTHER`].
const CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        if PLAIN[b] {
            t[b] = 0;
        } else if b == b'.' as usize {
            t[b] = DOT;
        }
        b += 1;
    }
    t
};

/// The rules as written, over `char`s.
fn check_tokens_chars(s: &str, allow_wildcards: bool) -> Result<(), PatternError> {
    let count = s.split('.').count();
    for (i, token) in s.split('.').enumerate() {
        if token.is_empty() {
            return Err(PatternError::EmptyToken);
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace);
        }
        let wild = token == "*" || token == ">";
        if wild && !allow_wildcards {
            return Err(PatternError::WildcardInSubject);
        }
        if token == ">" && i + 1 != count {
            return Err(PatternError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Checks a concrete subject (no wildcards), as used for publishing.
pub fn check_subject(subject: &str) -> Result<(), PatternError> {
    check_tokens(subject, false)
}

/// Checks a subscription pattern: `*` matches one token, a final `>` one or more.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    check_tokens(pattern, true)
}

/// Whether `subject` matches `pattern` under NATS rules (reference implementation; the local
/// broker uses a trie with the same semantics).
///
/// ```
/// use bus_subject::matches;
/// assert!(matches("a.*", "a.b"));
/// assert!(!matches("a.*", "a"));
/// assert!(matches("a.>", "a.b.c"));
/// assert!(!matches("a.>", "a"));
/// ```
pub fn matches(pattern: &str, subject: &str) -> bool {
    // Token by token over the bytes, as `split('.')` would see them (an empty string is one
    // empty token): a JetStream publish and a local durable ask this per message, and the
    // `split` iterators cost ten times this loop.
    let (p, s) = (pattern.as_bytes(), subject.as_bytes());
    let (mut at_p, mut at_s) = (Some(0), Some(0));
    loop {
        match (at_p, at_s) {
            (Some(i), Some(j)) => {
                let (end_p, end_s) = (token_end(p, i), token_end(s, j));
                let token = &p[i..end_p];
                if token == b">" {
                    return true;
                }
                if token != b"*" && token != &s[j..end_s] {
                    return false;
                }
                at_p = (end_p < p.len()).then_some(end_p + 1);
                at_s = (end_s < s.len()).then_some(end_s + 1);
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The end (exclusive byte index) of the token of `s` that starts at `start`.
const fn token_end(s: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < s.len() && s[i] != b'.' {
        i += 1;
    }
    i
}

/// Whether `a[a0..a1]` and `b[b0..b1]` are the same bytes.
const fn same_token(a: &[u8], a0: usize, a1: usize, b: &[u8], b0: usize, b1: usize) -> bool {
    if a1 - a0 != b1 - b0 {
        return false;
    }
    let mut i = 0;
    while i < a1 - a0 {
        if a[a0 + i] != b[b0 + i] {
            return false;
        }
        i += 1;
    }
    true
}

/// How a token of one side of [`walk`] matches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A template: a token `<name>` stands for any one token.
    Template,
    /// A concrete subject: every token is literal.
    Subject,
    /// A subscription pattern: `*` is any one token, a final `>` one or more.
    Pattern,
}

/// The one token-by-token comparison behind [`templates_overlap`], [`template_matches`] and
/// [`pattern_admits`]: whether some concrete subject fits both sides.
const fn walk(a: &[u8], a_side: Side, b: &[u8], b_side: Side) -> bool {
    let (mut i, mut j) = (0, 0);
    loop {
        let (a_done, b_done) = (i > a.len(), j > b.len());
        if a_done || b_done {
            return a_done && b_done;
        }
        let (ae, be) = (token_end(a, i), token_end(b, j));
        let a_any = match a_side {
            Side::Template => ae > i && a[i] == b'<',
            Side::Pattern => ae == i + 1 && a[i] == b'*',
            Side::Subject => false,
        };
        let b_any = match b_side {
            Side::Template => be > j && b[j] == b'<',
            Side::Pattern => be == j + 1 && b[j] == b'*',
            Side::Subject => false,
        };
        // A final `>` takes this token and every later one (at least this one exists).
        if matches!(a_side, Side::Pattern) && ae == i + 1 && ae == a.len() && a[i] == b'>' {
            return true;
        }
        if matches!(b_side, Side::Pattern) && be == j + 1 && be == b.len() && b[j] == b'>' {
            return true;
        }
        if !a_any && !b_any && !same_token(a, i, ae, b, j, be) {
            return false;
        }
        i = ae + 1;
        j = be + 1;
    }
}

/// Whether two subject templates can produce the same concrete subject: they have as many
/// tokens, and at each position the literals are equal or one side is a placeholder (which
/// takes any token). A `const fn`, so `#[derive(Messages)]` refuses overlapping variants at
/// compile time with this very rule.
///
/// ```
/// use bus_subject::templates_overlap;
/// assert!(templates_overlap("agent.events.<agent>", "agent.events.started"));
/// assert!(templates_overlap("agent.events.<a>.x", "agent.events.planner.<b>"));
/// assert!(!templates_overlap("agent.events.<agent>.started", "agent.events.<agent>.stopped"));
/// assert!(!templates_overlap("agent.events.<agent>", "agent.events.<agent>.<run>"));
/// ```
pub const fn templates_overlap(a: &str, b: &str) -> bool {
    walk(a.as_bytes(), Side::Template, b.as_bytes(), Side::Template)
}

/// Whether a concrete subject fits a template: as many tokens, equal literals, any token for
/// a placeholder.
///
/// ```
/// use bus_subject::template_matches;
/// assert!(template_matches("agent.events.<agent>.started", "agent.events.planner.started"));
/// assert!(!template_matches("agent.events.<agent>.started", "agent.events.planner.stopped"));
/// assert!(!template_matches("agent.events.<agent>", "agent.events.planner.started"));
/// ```
pub const fn template_matches(template: &str, subject: &str) -> bool {
    walk(
        template.as_bytes(),
        Side::Template,
        subject.as_bytes(),
        Side::Subject,
    )
}

/// Whether a subscription pattern can receive any subject of a template.
///
/// ```
/// use bus_subject::pattern_admits;
/// assert!(pattern_admits("agent.events.>", "agent.events.<agent>.started"));
/// assert!(pattern_admits("agent.*.planner", "agent.events.<agent>"));
/// assert!(!pattern_admits("agent.route.>", "agent.events.<agent>"));
/// assert!(!pattern_admits("agent.events.*", "agent.events.<agent>.started"));
/// ```
pub const fn pattern_admits(pattern: &str, template: &str) -> bool {
    walk(
        pattern.as_bytes(),
        Side::Pattern,
        template.as_bytes(),
        Side::Template,
    )
}

/// A concrete subject both templates produce, if they overlap ([`templates_overlap`]): each
/// literal as written, and where both sides have a placeholder, the first one's name as the
/// value.
///
/// ```
/// use bus_subject::overlap_example;
/// assert_eq!(
///     overlap_example("agent.events.<agent>.x", "agent.events.planner.<event>").as_deref(),
///     Some("agent.events.planner.x")
/// );
/// assert_eq!(overlap_example("agent.events.a", "agent.events.b"), None);
/// ```
pub fn overlap_example(a: &str, b: &str) -> Option<String> {
    if !templates_overlap(a, b) {
        return None;
    }
    let tokens = a.split('.').zip(b.split('.')).map(|(x, y)| {
        match (placeholder_name(x), placeholder_name(y)) {
            (Some(name), Some(_)) => name,
            (Some(_), None) => y,
            (None, _) => x,
        }
    });
    Some(tokens.collect::<Vec<_>>().join("."))
}

/// The candidate nearest to `word` by edit distance, if it is close enough to be a likely typo.
///
/// ```
/// assert_eq!(bus_subject::nearest("chanel", ["channel", "instance"]), Some("channel"));
/// assert_eq!(bus_subject::nearest("zzz", ["channel", "instance"]), None);
/// ```
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            // A difference of case only is the closest possible miss.
            let d = if c.to_ascii_lowercase() == lower {
                0
            } else {
                levenshtein(word, c)
            };
            (d, c)
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<TemplateErrorKind> {
        parse_template(t)
            .unwrap_err()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn accepts_templates() {
        let t = parse_template("agent.route.<agent>").unwrap();
        assert_eq!(t.root, "agent.route");
        assert_eq!(
            t.segments,
            [
                Segment::Literal("agent"),
                Segment::Literal("route"),
                Segment::Placeholder("agent")
            ]
        );
        assert!(parse_template("plugin.health.all-ok_2").is_ok());
    }

    #[test]
    fn root_errors() {
        assert_eq!(
            kinds("plugin.outbond.x"),
            [TemplateErrorKind::UnknownRoot {
                found: "plugin.outbond".into(),
                suggestion: Some("plugin.outbound")
            }]
        );
        assert_eq!(
            kinds("Plugin.Outbound.x"),
            [TemplateErrorKind::UnknownRoot {
                found: "Plugin.Outbound".into(),
                suggestion: Some("plugin.outbound")
            }]
        );
        assert_eq!(
            kinds("agent.route"),
            [TemplateErrorKind::NothingAfterRoot {
                root: "agent.route"
            }]
        );
    }

    #[test]
    fn token_errors_are_all_reported() {
        let k = kinds("agent.events..*.a b.<x>.<x>.<1y>");
        assert_eq!(k.len(), 5, "{k:?}");
        assert_eq!(k[0], TemplateErrorKind::EmptyToken);
        assert!(matches!(k[1], TemplateErrorKind::Wildcard { .. }));
        assert!(matches!(
            k[2],
            TemplateErrorKind::InvalidChar { ch: ' ', .. }
        ));
        assert!(matches!(
            k[3],
            TemplateErrorKind::DuplicatePlaceholder { .. }
        ));
        assert!(matches!(
            k[4],
            TemplateErrorKind::MalformedPlaceholder { .. }
        ));
        assert!(matches!(
            kinds("agent.events.>")[0],
            TemplateErrorKind::Wildcard { .. }
        ));
        assert!(matches!(
            kinds("agent.events.a<b>")[0],
            TemplateErrorKind::MalformedPlaceholder { .. }
        ));
    }

    #[test]
    fn runtime_tokens() {
        for bad in ["", "a.b", "*", ">", "a b", "a\tb", "a\u{0}b", "a\nb", "x>"] {
            assert!(check_token(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["slack", "a-1", "a_b", "42", "ünï"] {
            assert!(check_token(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn the_byte_pass_agrees_with_the_char_rules() {
        let cases = [
            "",
            ".",
            "a",
            "a.",
            ".a",
            "a..b",
            "a.b",
            "*",
            ">",
            "a.*",
            "a.>",
            "a.>.b",
            ">.a",
            "a.*.>",
            "a*",
            "a.b*",
            "x>",
            "a b",
            "a\tb",
            "a\u{7f}b",
            "a\u{0}",
            "a.\u{1f}",
            "ünï.b",
            "a.\u{a0}",
            "a.\u{85}",
            "é..b",
            "é.*",
            "é.>.x",
            "plugin.outbound.slack.a1",
            "a-b_c.D9",
            "a.b.",
            "..",
            "a.$",
            "a.é",
        ];
        for s in cases {
            for wild in [false, true] {
                assert_eq!(
                    check_tokens(s, wild),
                    check_tokens_chars(s, wild),
                    "{s:?} (wildcards allowed: {wild})"
                );
            }
        }
    }

    #[test]
    fn patterns() {
        assert!(check_pattern("a.*.>").is_ok());
        assert!(check_pattern(">").is_ok());
        assert_eq!(check_pattern("a.>.b"), Err(PatternError::MisplacedWildcard));
        assert_eq!(check_pattern("a..b"), Err(PatternError::EmptyToken));
        assert_eq!(check_subject("a.*"), Err(PatternError::WildcardInSubject));
        assert!(matches(">", "a"));
        assert!(matches("*.*", "a.b"));
        assert!(!matches("*.*", "a"));
        assert!(!matches("*.*", "a.b.c"));
        assert!(!matches("a", "a.b"));
    }

    /// The byte loop of [`matches`] against the `split('.')` definition it replaced, on every
    /// pair of a set of patterns and subjects, malformed ones (empty, empty tokens) included.
    #[test]
    fn matches_agrees_with_split() {
        fn by_split(pattern: &str, subject: &str) -> bool {
            let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
            loop {
                match (p.next(), s.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        let strings = [
            "",
            ".",
            "..",
            "a",
            "a.",
            ".a",
            "a.b",
            "a..b",
            "a.b.c",
            "ab.c",
            "a.bc",
            "*",
            ">",
            "a.*",
            "a.>",
            "*.b",
            "*.*",
            "a.*.c",
            "a.b.>",
            "*.>",
            ">.a",
            "a.b.c.d",
            "plugin.outbound.x.y",
            "plugin.outbound.*.y",
            "plugin.outbound.>",
            "plugin.outbound",
        ];
        for pattern in strings {
            for subject in strings {
                assert_eq!(
                    matches(pattern, subject),
                    by_split(pattern, subject),
                    "{pattern:?} against {subject:?}"
                );
            }
        }
    }
}
