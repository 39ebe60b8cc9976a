//! Templates that can match the same subject. The rule is `bus_subject::templates_overlap`,
//! the one `#[derive(Messages)]` applies at compile time.

use std::fmt;

use super::registry::{catalog, Descriptor};

/// Two message types whose templates can produce the same concrete subject: a subscriber to
/// one receives the other's messages and fails to decode them (or, worse, decodes them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Overlap {
    /// The first type (by catalog order).
    pub a: Descriptor,
    /// The second type.
    pub b: Descriptor,
    /// A subject both produce.
    pub example: String,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` (`{}`) and `{}` (`{}`) can both be sent on `{}`",
            self.a.rust_path, self.a.template, self.b.rust_path, self.b.template, self.example
        )
    }
}

/// Every pair of types in this binary's [`catalog()`] whose templates overlap.
///
/// ```
/// use bus::Message;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Message)]
/// #[subject("plugin.inbound.<channel>.ping")]
/// struct Ping { channel: String }
///
/// #[derive(Serialize, Deserialize, Message)]
/// #[subject("plugin.inbound.slack.<kind>")]
/// struct SlackEvent { kind: String }
///
/// let found = bus::catalog::overlaps();
/// let o = found.iter().find(|o| o.a.type_name == "Ping" || o.b.type_name == "Ping").unwrap();
/// assert_eq!(o.example, "plugin.inbound.slack.ping");
/// ```
pub fn overlaps() -> Vec<Overlap> {
    overlaps_of(&catalog())
}

/// Every pair among `descriptors` whose templates overlap (for a merged, discovered catalog).
pub fn overlaps_of(descriptors: &[Descriptor]) -> Vec<Overlap> {
    let mut out = Vec::new();
    for (i, a) in descriptors.iter().enumerate() {
        for b in &descriptors[i + 1..] {
            if a.rust_path == b.rust_path {
                continue;
            }
            if let Some(example) = bus_subject::overlap_example(&a.template, &b.template) {
                out.push(Overlap {
                    a: a.clone(),
                    b: b.clone(),
                    example,
                });
            }
        }
    }
    out
}

/// Panics, naming both types of every pair, if two message types of this binary can match
/// the same subject. Put it in a test of your own crate:
///
/// ```text
/// #[test]
/// fn no_two_message_types_share_a_subject() {
///     bus::catalog::assert_no_overlaps();
/// }
/// ```
///
/// The message lists each pair as `` `a::Ping` (`plugin.inbound.<channel>.ping`) and
/// `a::SlackEvent` (`plugin.inbound.slack.<kind>`) can both be sent on
/// `plugin.inbound.slack.ping` ``.
#[track_caller]
pub fn assert_no_overlaps() {
    let found = overlaps();
    if !found.is_empty() {
        let list: Vec<String> = found.iter().map(|o| format!("  - {o}")).collect();
        panic!(
            "{} pair(s) of message types have subject templates that match the same subjects:\n{}\nmake the templates differ by a literal token (or by their number of tokens)",
            found.len(),
            list.join("\n")
        );
    }
}
