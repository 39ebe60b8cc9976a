//! An AsyncAPI 3.0 document of a catalog.

use serde_json::{json, Map, Value};

use super::registry::{catalog, Descriptor};
use super::schema::payload_schema;

/// The content type of every payload `bus` sends.
const MSGPACK: &str = "application/msgpack";

/// The AsyncAPI 3.0 document of every message type in this binary ([`catalog()`]); see
/// [`asyncapi_of`].
///
/// ```
/// let doc = bus::catalog::asyncapi();
/// assert_eq!(doc["asyncapi"], "3.0.0");
/// ```
pub fn asyncapi() -> Value {
    asyncapi_of(&catalog(), "bus catalog")
}

/// The AsyncAPI 3.0 document of `descriptors`, titled `title`.
///
/// Each type is a channel (named after the type) whose address is its template with
/// `{placeholder}` parameters, carrying one message with content type `application/msgpack`
/// and a JSON Schema of the payload built from the field types. Each type has two
/// operations: `publish<Type>` (send) and `subscribe<Type>` (receive); for a request type
/// they are `request<Type>` and `serve<Type>`, each with a reply on the channel
/// `<Type>Reply` (its address is the requester's inbox, so `null`: known only at run time).
pub fn asyncapi_of(descriptors: &[Descriptor], title: &str) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for d in descriptors {
        let key = unique_key(&messages, d);
        let parameters: Map<String, Value> = d
            .placeholders
            .iter()
            .map(|p| {
                let ty = d
                    .fields
                    .iter()
                    .find(|f| &f.name == p)
                    .map_or("?", |f| f.ty.as_str());
                let description = format!("The `{p}` field (`{ty}`), one subject token.");
                (p.clone(), json!({ "description": description }))
            })
            .collect();
        let address = d.placeholders.iter().fold(d.template.clone(), |a, p| {
            a.replace(&format!("<{p}>"), &format!("{{{p}}}"))
        });
        let mut channel = json!({
            "address": address,
            "title": d.type_name,
            "description": format!("Subject template `{}` of `{}`.", d.template, d.rust_path),
            "messages": { &key: { "$ref": format!("#/components/messages/{key}") } },
        });
        if !parameters.is_empty() {
            channel["parameters"] = Value::Object(parameters);
        }
        channels.insert(key.clone(), channel);
        messages.insert(
            key.clone(),
            json!({
                "name": d.type_name,
                "title": d.type_name,
                "summary": format!("`{}` on `{}`", d.rust_path, d.template),
                "contentType": MSGPACK,
                "payload": payload_schema(d),
            }),
        );
        let channel_ref = json!({ "$ref": format!("#/channels/{key}") });
        let message_ref = json!([{ "$ref": format!("#/channels/{key}/messages/{key}") }]);
        match &d.reply {
            None => {
                for (op, action) in [("publish", "send"), ("subscribe", "receive")] {
                    operations.insert(
                        format!("{op}{key}"),
                        json!({ "action": action, "channel": channel_ref, "messages": message_ref }),
                    );
                }
            }
            Some(reply) => {
                let reply_key = format!("{key}Reply");
                channels.insert(
                    reply_key.clone(),
                    json!({
                        "address": null,
                        "description": format!("The reply to `{}`: the requester's inbox.", d.type_name),
                        "messages": { &reply_key: { "$ref": format!("#/components/messages/{reply_key}") } },
                    }),
                );
                messages.insert(
                    reply_key.clone(),
                    json!({
                        "name": reply,
                        "title": reply,
                        "summary": format!("The reply to `{}`", d.type_name),
                        "contentType": MSGPACK,
                        "payload": {
                            "description": format!("`{reply}`: its fields are not in the catalog (it does not derive `Message`)"),
                        },
                    }),
                );
                let reply = json!({
                    "channel": { "$ref": format!("#/channels/{reply_key}") },
                    "messages": [{ "$ref": format!("#/channels/{reply_key}/messages/{reply_key}") }],
                });
                for (op, action) in [("request", "send"), ("serve", "receive")] {
                    operations.insert(
                        format!("{op}{key}"),
                        json!({ "action": action, "channel": channel_ref, "messages": message_ref, "reply": reply }),
                    );
                }
            }
        }
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Message types of `bus` (generated from the catalog): MessagePack payloads with named fields over NATS.",
        },
        "defaultContentType": MSGPACK,
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// The type's name as a component key, or its Rust path (`a.b.Type`) when another type of
/// the same name came first.
fn unique_key(taken: &Map<String, Value>, d: &Descriptor) -> String {
    if !taken.contains_key(&d.type_name) {
        return d.type_name.clone();
    }
    d.rust_path.replace("::", ".")
}
