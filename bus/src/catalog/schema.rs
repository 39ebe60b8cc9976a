//! A JSON Schema of a payload, from its fields' types as written.
//!
//! The registry has each field's type as source text (the derive cannot see other types'
//! definitions), so the common standard types are mapped to what `rmp_serde` writes for them
//! and every other type is described by name only (`{}` accepts any value).

use serde_json::{json, Map, Value};

use super::registry::Descriptor;

/// The JSON Schema (draft 7) of a message type's MessagePack payload: an object with one
/// property per field; fields whose type is not `Option<…>` are required.
///
/// ```
/// use bus::Message;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Message)]
/// #[subject("plugin.outbound.<channel>")]
/// struct Outbound { channel: String, tries: u32, tags: Vec<String>, note: Option<String> }
///
/// let d = bus::catalog().into_iter().find(|d| d.type_name == "Outbound").unwrap();
/// let schema = bus::catalog::payload_schema(&d);
/// assert_eq!(schema["properties"]["tries"]["type"], "integer");
/// assert_eq!(schema["properties"]["tags"]["items"]["type"], "string");
/// assert_eq!(schema["required"], serde_json::json!(["channel", "tries", "tags"]));
/// ```
pub fn payload_schema(d: &Descriptor) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in &d.fields {
        let mut schema = type_schema(&f.ty);
        if let Value::Object(o) = &mut schema {
            o.insert("x-rust-type".into(), Value::String(f.ty.clone()));
        }
        if !is_option(&f.ty) {
            required.push(Value::String(f.name.clone()));
        }
        properties.insert(f.name.clone(), schema);
    }
    json!({
        "type": "object",
        "title": d.type_name,
        "properties": properties,
        "required": required,
    })
}

fn is_option(ty: &str) -> bool {
    matches!(split_generic(ty), Some(("Option", _)))
}

/// `Vec<String>` -> `("Vec", ["String"])`, the path before the last segment dropped.
fn split_generic(ty: &str) -> Option<(&str, Vec<&str>)> {
    let open = ty.find('<')?;
    let inner = ty.strip_suffix('>')?.get(open + 1..)?;
    let head = last_segment(&ty[..open]);
    let mut args = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                args.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args.push(inner[start..].trim());
    // Lifetimes (`Cow<'a, str>`) are not types.
    args.retain(|a| !a.starts_with('\''));
    Some((head, args))
}

fn last_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path).trim()
}

/// The schema of one type as written.
fn type_schema(ty: &str) -> Value {
    let ty = ty.trim();
    // References and lifetimes do not change the encoding.
    if let Some(rest) = ty.strip_prefix('&') {
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('\'') {
            Some(r) => r.split_once(' ').map_or("", |(_, t)| t),
            None => rest,
        };
        return type_schema(rest.strip_prefix("mut ").unwrap_or(rest));
    }
    if let Some(inner) = ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let item = inner.split_once(';').map_or(inner, |(item, _)| item);
        return json!({ "type": "array", "items": type_schema(item) });
    }
    if ty == "()" {
        return json!({ "type": "null" });
    }
    if let Some((head, args)) = split_generic(ty) {
        return match (head, args.as_slice()) {
            ("Option", [t]) => json!({ "anyOf": [type_schema(t), { "type": "null" }] }),
            ("Box" | "Arc" | "Rc" | "Cow", [t]) => type_schema(t),
            ("Vec" | "VecDeque" | "LinkedList", [t]) => {
                json!({ "type": "array", "items": type_schema(t) })
            }
            ("HashSet" | "BTreeSet", [t]) => {
                json!({ "type": "array", "items": type_schema(t), "uniqueItems": true })
            }
            ("HashMap" | "BTreeMap", [_, v]) => {
                json!({ "type": "object", "additionalProperties": type_schema(v) })
            }
            _ => json!({ "description": format!("`{ty}`: not described by the catalog") }),
        };
    }
    let unsigned = |max: u64| json!({ "type": "integer", "minimum": 0, "maximum": max });
    match last_segment(ty) {
        "String" | "str" => json!({ "type": "string" }),
        "char" => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
        "bool" => json!({ "type": "boolean" }),
        "u8" => unsigned(u8::MAX.into()),
        "u16" => unsigned(u16::MAX.into()),
        "u32" => unsigned(u32::MAX.into()),
        "u64" | "u128" | "usize" => json!({ "type": "integer", "minimum": 0 }),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => json!({ "type": "integer" }),
        "f32" | "f64" => json!({ "type": "number" }),
        other => json!({ "description": format!("`{other}`: not described by the catalog") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_map_to_what_msgpack_carries() {
        assert_eq!(
            type_schema("std::string::String"),
            json!({"type": "string"})
        );
        assert_eq!(type_schema("&'static str"), json!({"type": "string"}));
        assert_eq!(type_schema("Cow<'static, str>"), json!({"type": "string"}));
        assert_eq!(
            type_schema("Option<u8>"),
            json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 255}, {"type": "null"}]})
        );
        assert_eq!(
            type_schema("HashMap<String, Vec<i64>>"),
            json!({"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}})
        );
        assert_eq!(
            type_schema("[f32; 3]"),
            json!({"type": "array", "items": {"type": "number"}})
        );
        assert!(type_schema("ChannelId")["description"]
            .as_str()
            .unwrap()
            .contains("`ChannelId`"));
        assert!(is_option("std::option::Option<String>"));
        assert!(!is_option("Vec<Option<String>>"));
    }
}
