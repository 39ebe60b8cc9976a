//! The registry: one static [`Registration`] per derived type, collected at link time.

use serde::{Deserialize, Serialize};

/// What `#[derive(Message)]` registers for its type: one static, built at compile time. Not
/// public API; read the catalog through [`catalog()`].
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    /// The type's name.
    pub type_name: &'static str,
    /// `module_path!()` where it is defined.
    pub module_path: &'static str,
    /// The subject template.
    pub template: &'static str,
    /// `(name, type as written)` of each field, in order.
    pub fields: &'static [(&'static str, &'static str)],
    /// The reply type as written, for `#[reply(T)]` types.
    pub reply: Option<&'static str>,
}

inventory::collect!(Registration);

/// A message type as the catalog knows it: its template, fields and reply type.
///
/// Owned and serializable, so a service can send its catalog to a tool ([`serve`](super::serve),
/// [`discover`](super::discover)) and the tool can read it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Descriptor {
    /// The type's name, as sent in the `Bus-Type` header.
    pub type_name: String,
    /// Its full Rust path (`my_crate::events::Started`).
    pub rust_path: String,
    /// The subject template, as written in `#[subject("…")]`.
    pub template: String,
    /// The placeholder names of the template, in order.
    pub placeholders: Vec<String>,
    /// Every field of the payload, in order, with its type as written.
    pub fields: Vec<FieldDescriptor>,
    /// The reply type as written, for request types (`#[reply(T)]`).
    pub reply: Option<String>,
    /// The JetStream stream that covers the subject, if known. Streams are declared on the
    /// builder at run time, not on the type, so the registry leaves this `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// One field of a message type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FieldDescriptor {
    /// The field's name (the key in the MessagePack map).
    pub name: String,
    /// Its type as written in the struct (`String`, `Vec<u8>`, `Option<u32>`).
    #[serde(rename = "type")]
    pub ty: String,
}

impl Descriptor {
    /// Whether the type is a request (has a reply type).
    pub fn is_request(&self) -> bool {
        self.reply.is_some()
    }

    fn of(r: &Registration) -> Descriptor {
        // The derive accepted the template: it parses.
        let placeholders = bus_subject::parse_template(r.template).map_or_else(
            |_| Vec::new(),
            |t| t.placeholders().map(str::to_owned).collect(),
        );
        Descriptor {
            type_name: r.type_name.to_owned(),
            rust_path: format!("{}::{}", r.module_path, r.type_name),
            template: r.template.to_owned(),
            placeholders,
            fields: r
                .fields
                .iter()
                .map(|(name, ty)| FieldDescriptor {
                    name: (*name).to_owned(),
                    ty: (*ty).to_owned(),
                })
                .collect(),
            reply: r.reply.map(str::to_owned),
            stream: None,
        }
    }
}

/// Every message type linked into this binary, sorted by template then Rust path.
///
/// Types in a library appear once the binary links that library (it uses something of it).
/// Each call builds the list anew from the static registrations: not for a hot path.
pub fn catalog() -> Vec<Descriptor> {
    let mut all: Vec<Descriptor> = inventory::iter::<Registration>
        .into_iter()
        .map(Descriptor::of)
        .collect();
    all.sort_by(|a, b| (&a.template, &a.rust_path).cmp(&(&b.template, &b.rust_path)));
    all
}
