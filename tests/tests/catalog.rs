//! The catalog (`docs/design.md`, "The catalog"): the link-time registry, the overlap check, the AsyncAPI
//! document (validated against the AsyncAPI 3.0 JSON Schema), catalog discovery across
//! processes' buses on a real nats-server, and typed fan-in (`#[derive(Messages)]`).

use std::time::Duration;

use bus::{Bus, ConnectionState, Envelope, Error, Message, Messages, RawMessage};
use bus_tests::server::NatsServer;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>.assign")]
#[reply(AssignReply)]
struct Assign {
    agent: String,
    task: String,
    deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AssignReply {
    accepted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.started")]
struct Started {
    agent: String,
    pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>.stopped")]
struct Stopped {
    agent: String,
    code: i32,
    tags: Vec<String>,
}

/// Two types that overlap on purpose: `plugin.inbound.slack.ping` is both. Never built: only
/// their registrations are read.
#[allow(dead_code)]
mod overlapping {
    use bus::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Message)]
    #[subject("plugin.inbound.<channel>.ping")]
    pub struct Ping {
        pub channel: String,
    }

    #[derive(Serialize, Deserialize, Message)]
    #[subject("plugin.inbound.slack.<kind>")]
    pub struct SlackEvent {
        pub kind: String,
    }
}

#[derive(Debug, Clone, PartialEq, Messages)]
enum AgentEvent {
    Started(Started),
    Stopped(Stopped),
}

fn descriptor(type_name: &str) -> bus::catalog::Descriptor {
    bus::catalog()
        .into_iter()
        .find(|d| d.type_name == type_name)
        .unwrap_or_else(|| panic!("`{type_name}` is not in the catalog"))
}

#[test]
fn every_derived_type_is_in_the_catalog_with_its_fields_and_reply() {
    let d = descriptor("Assign");
    assert_eq!(d.template, "agent.route.<agent>.assign");
    assert_eq!(d.rust_path, "catalog::Assign");
    assert_eq!(d.placeholders, ["agent"]);
    let fields: Vec<(&str, &str)> = d
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.ty.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("agent", "String"),
            ("task", "String"),
            ("deadline_ms", "Option<u64>")
        ]
    );
    assert_eq!(d.reply.as_deref(), Some("AssignReply"));
    assert_eq!(d.stream, None);
    let s = descriptor("Stopped");
    assert_eq!(s.reply, None);
    assert_eq!(s.placeholders, ["agent"]);
    // The built-in heartbeat type of `bus` itself is registered too.
    assert_eq!(descriptor("Health").template, "plugin.health.<instance>");
    // Sorted by template.
    let all = bus::catalog();
    assert!(all.windows(2).all(|w| w[0].template <= w[1].template));
}

#[test]
fn overlaps_name_both_types_and_a_subject_both_produce() {
    let found = bus::catalog::overlaps();
    assert_eq!(found.len(), 1, "{found:?}");
    let o = &found[0];
    let mut names = [o.a.type_name.as_str(), o.b.type_name.as_str()];
    names.sort();
    assert_eq!(names, ["Ping", "SlackEvent"]);
    assert_eq!(o.example, "plugin.inbound.slack.ping");
    // Templates that differ by a literal (`started` / `stopped`) do not overlap.
    assert!(!found.iter().any(|o| o.a.type_name == "Started"));
}

#[test]
fn assert_no_overlaps_fails_naming_both_types() {
    let panic = std::panic::catch_unwind(bus::catalog::assert_no_overlaps).unwrap_err();
    let text = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(text.contains("`catalog::overlapping::Ping`"), "{text}");
    assert!(
        text.contains("`catalog::overlapping::SlackEvent`"),
        "{text}"
    );
    assert!(text.contains("`plugin.inbound.slack.ping`"), "{text}");
}

/// The AsyncAPI 3.0 JSON Schema of the npm package `@asyncapi/specs` (installed by
/// tests/run.sh), or the file `ASYNCAPI_SCHEMA` names.
fn asyncapi_schema() -> serde_json::Value {
    let path = std::env::var_os("ASYNCAPI_SCHEMA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/asyncapi-specs/node_modules/@asyncapi/specs/schemas/3.0.0.json")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the AsyncAPI 3.0 JSON Schema at {}: {e}; run tests/run.sh, or install it with \
             `npm install --prefix target/asyncapi-specs --no-package-lock @asyncapi/specs@6.11.1`, \
             or set ASYNCAPI_SCHEMA to a copy of schemas/3.0.0.json",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn schema_errors(validator: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() {
    let doc = bus::catalog::asyncapi();
    let validator = jsonschema::validator_for(&asyncapi_schema()).expect("the schema compiles");
    let errors = schema_errors(&validator, &doc);
    assert!(
        errors.is_empty(),
        "{errors:#?}\n{}",
        serde_json::to_string_pretty(&doc).unwrap()
    );

    // The validator does reject a malformed document: an operation with an unknown action.
    let mut broken = doc.clone();
    broken["operations"]["publishStarted"]["action"] = "emit".into();
    assert!(!schema_errors(&validator, &broken).is_empty());

    // What it says.
    let channel = &doc["channels"]["Stopped"];
    assert_eq!(channel["address"], "agent.events.{agent}.stopped");
    assert!(channel["parameters"]["agent"]["description"]
        .as_str()
        .unwrap()
        .contains("`String`"));
    let message = &doc["components"]["messages"]["Stopped"];
    assert_eq!(message["contentType"], "application/msgpack");
    assert_eq!(message["payload"]["properties"]["code"]["type"], "integer");
    assert_eq!(
        message["payload"]["properties"]["tags"]["items"]["type"],
        "string"
    );
    assert_eq!(doc["operations"]["publishStopped"]["action"], "send");
    assert_eq!(doc["operations"]["subscribeStopped"]["action"], "receive");
    let request = &doc["operations"]["requestAssign"];
    assert_eq!(request["action"], "send");
    assert_eq!(
        request["reply"]["channel"]["$ref"],
        "#/channels/AssignReply"
    );
    assert_eq!(doc["operations"]["serveAssign"]["action"], "receive");
    assert_eq!(
        doc["components"]["messages"]["Assign"]["payload"]["required"],
        serde_json::json!(["agent", "task"])
    );
}

async fn nats_bus(server: &NatsServer, instance: &str) -> Bus {
    let bus = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .instance(instance)
        .connect()
        .await
        .unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("connected within 10 s")
    .unwrap();
    bus
}

#[tokio::test]
async fn discover_gathers_the_catalog_of_every_running_service() {
    let server = NatsServer::start();
    let planner = nats_bus(&server, "planner-1").await;
    let sender = nats_bus(&server, "sender-1").await;
    let tool = nats_bus(&server, "tool").await;
    let r1 = bus::catalog::serve(&planner).await.unwrap();
    let r2 = bus::catalog::serve(&sender).await.unwrap();
    planner.flush().await.unwrap();
    sender.flush().await.unwrap();

    let found = bus::catalog::discover(&tool, Duration::from_millis(500))
        .await
        .unwrap();
    let instances: Vec<&str> = found.services.iter().map(|s| s.instance.as_str()).collect();
    assert_eq!(instances, ["planner-1", "sender-1"]);
    let merged = found.messages();
    let (delegate, who) = merged
        .iter()
        .find(|(d, _)| d.type_name == "Assign")
        .expect("Assign reported");
    assert_eq!(delegate.template, "agent.route.<agent>.assign");
    assert_eq!(who, &["planner-1", "sender-1"]);
    // Each type once, though two services reported it.
    assert_eq!(
        merged
            .iter()
            .filter(|(d, _)| d.type_name == "Assign")
            .count(),
        1
    );
    let table = found.table();
    let row = table
        .lines()
        .find(|l| l.starts_with("Assign "))
        .expect("an Assign row");
    for cell in [
        "agent.route.<agent>.assign",
        "AssignReply",
        "deadline_ms: Option<u64>",
        "planner-1, sender-1",
    ] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}\n{table}");
    }
    assert!(table.starts_with("TYPE"), "{table}");
    assert_eq!(
        found.asyncapi()["channels"]["Assign"]["address"],
        "agent.route.{agent}.assign"
    );

    // Stopped responders do not answer.
    r1.stop().await;
    r2.stop().await;
    let none = bus::catalog::discover(&tool, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(none.services.is_empty(), "{none:?}");
}

async fn next(events: &mut bus::FanIn<AgentEvent>) -> bus::Result<Envelope<AgentEvent>> {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an item within 5 s")
        .expect("the stream goes on")
}

async fn fan_in_receives_each_type_and_names_an_unmatched_subject(bus: &Bus) {
    let mut events = AgentEvent::subscribe(bus, "agent.events.>").await.unwrap();
    Started {
        agent: "planner".into(),
        pid: 7,
    }
    .publish(bus)
    .await
    .unwrap();
    bus.publish_raw(RawMessage::new("agent.events.planner.paused", vec![0x80]))
        .await
        .unwrap();
    Stopped {
        agent: "planner".into(),
        code: 3,
        tags: vec!["x".into()],
    }
    .publish(bus)
    .await
    .unwrap();
    let first: Envelope<AgentEvent> = next(&mut events).await.unwrap();
    assert_eq!(
        first.body(),
        &AgentEvent::Started(Started {
            agent: "planner".into(),
            pid: 7
        })
    );
    assert_eq!(first.subject(), "agent.events.planner.started");
    match next(&mut events).await {
        Err(Error::InvalidSubject { subject, reason }) => {
            assert_eq!(subject, "agent.events.planner.paused");
            assert!(reason.contains("`AgentEvent`"), "{reason}");
            assert!(reason.contains("agent.events.<agent>.stopped"), "{reason}");
        }
        other => panic!("expected the unmatched subject as an error, got {other:?}"),
    }
    let third = next(&mut events).await.unwrap();
    assert!(matches!(third.body(), AgentEvent::Stopped(s) if s.code == 3 && s.tags == ["x"]));
}

#[tokio::test]
async fn fan_in_on_the_local_broker() {
    let bus = Bus::local().await.unwrap();
    fan_in_receives_each_type_and_names_an_unmatched_subject(&bus).await;
}

#[tokio::test]
async fn fan_in_on_nats() {
    let server = NatsServer::start();
    let bus = nats_bus(&server, "fan-in").await;
    fan_in_receives_each_type_and_names_an_unmatched_subject(&bus).await;
}

#[tokio::test]
async fn fan_in_refuses_a_pattern_no_variant_can_arrive_on() {
    let bus = Bus::local().await.unwrap();
    match AgentEvent::subscribe(&bus, "agent.route.>").await {
        Err(Error::InvalidSubject { subject, reason }) => {
            assert_eq!(subject, "agent.route.>");
            assert!(reason.contains("no variant of `AgentEvent`"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // One variant is enough.
    AgentEvent::subscribe(&bus, "agent.events.*.stopped")
        .await
        .unwrap();
}

#[tokio::test]
async fn fan_in_handle_runs_each_variant_and_dead_letters_an_unmatched_subject() {
    let bus = Bus::local().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = AgentEvent::handle(&bus, "agent.events.>", move |env| {
        let tx = tx.clone();
        async move {
            tx.send(env.into_body()).unwrap();
            Ok::<_, String>(())
        }
    })
    .await
    .unwrap();
    Stopped {
        agent: "a".into(),
        code: 1,
        tags: vec![],
    }
    .publish(&bus)
    .await
    .unwrap();
    bus.publish_raw(RawMessage::new("agent.events.a.paused", vec![0x80]))
        .await
        .unwrap();
    Started {
        agent: "a".into(),
        pid: 2,
    }
    .publish(&bus)
    .await
    .unwrap();
    let got = |v: Option<AgentEvent>| v.expect("the handler ran");
    let one = got(tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap());
    let two = got(tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap());
    assert!(matches!(one, AgentEvent::Stopped(s) if s.code == 1));
    assert!(matches!(two, AgentEvent::Started(s) if s.pid == 2));
    handler.stop().await;
    let dead = bus.dead_letters().list().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].subject, "agent.events.a.paused");
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].last_error.contains("no variant of `AgentEvent`"),
        "{}",
        dead[0].last_error
    );
}

/// A raw async-nats request, answered as JSON.
async fn srv(client: &async_nats::Client, subject: &str) -> serde_json::Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_owned(), bytes::Bytes::new()),
    )
    .await
    .expect("answered within 5 s")
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).expect("a JSON answer")
}

#[tokio::test]
async fn serve_registers_request_types_with_the_nats_service_api() {
    let server = NatsServer::start();
    let bus = nats_bus(&server, "planner-1").await;
    let service = bus::service::Service::builder("planner", "1.2.3")
        .description("assigns work")
        .start(&bus)
        .await
        .unwrap();
    let endpoint = service
        .serve(Assign::filter(), |req| async move {
            if req.task.is_empty() {
                return Err("empty task");
            }
            Ok(AssignReply { accepted: true })
        })
        .await
        .unwrap();

    // A bus requester is answered through the endpoint, errors included.
    let ok = Assign {
        agent: "a1".into(),
        task: "t".into(),
        deadline_ms: None,
    };
    assert!(ok.request(&bus).await.unwrap().accepted);
    let refused = Assign {
        task: String::new(),
        ..ok.clone()
    };
    match refused.request(&bus).await {
        Err(Error::Remote { message, .. }) => assert_eq!(message, "empty task"),
        other => panic!("expected the handler's error, got {other:?}"),
    }

    // Standard NATS tooling sees it, through a raw client.
    let raw = async_nats::connect(server.url()).await.unwrap();
    let ping = srv(&raw, "$SRV.PING").await;
    assert_eq!(ping["name"], "planner");
    assert_eq!(ping["version"], "1.2.3");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");

    let info = srv(&raw, "$SRV.INFO.planner").await;
    assert_eq!(info["description"], "assigns work");
    let endpoints = info["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{info}");
    assert_eq!(endpoints[0]["name"], "Assign");
    assert_eq!(endpoints[0]["subject"], "agent.route.*.assign");
    assert_eq!(
        endpoints[0]["metadata"]["bus.template"],
        "agent.route.<agent>.assign"
    );

    let stats = srv(&raw, "$SRV.STATS.planner").await;
    let e = &stats["endpoints"][0];
    assert_eq!(e["name"], "Assign");
    assert_eq!(e["num_requests"], 2, "{stats}");
    assert_eq!(e["num_errors"], 1, "{stats}");
    assert!(
        e["last_error"].as_str().unwrap().contains("empty task"),
        "{stats}"
    );

    endpoint.stop().await;
    service.stop().await;
    let gone = tokio::time::timeout(
        Duration::from_secs(2),
        raw.request("$SRV.PING.planner", bytes::Bytes::new()),
    )
    .await;
    assert!(
        !matches!(gone, Ok(Ok(_))),
        "a stopped service still answers"
    );
}

#[tokio::test]
async fn a_service_needs_a_bus_on_nats() {
    let bus = Bus::local().await.unwrap();
    match bus::service::Service::builder("planner", "1.0.0")
        .start(&bus)
        .await
    {
        Err(Error::Config(reason)) => assert!(reason.contains("NATS"), "{reason}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
