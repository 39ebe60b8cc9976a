//! Every way of answering requests (`T::serve`, `Bus::serve`, `Service::serve`) goes through one
//! responder: a handler that returns `Err` or panics gives the requester `Error::Remote` with
//! the handler's message at once (well inside the request timeout), whether the bus checks
//! subject fields or not, on the local broker and on a real nats-server.

use std::time::{Duration, Instant};

use bus::service::Service;
use bus::{Bus, ConnectionState, Error};
use bus_tests::msgs::{Delegate, RouteReply};
use bus_tests::server::NatsServer;

/// Long enough that a requester left waiting for it is obvious next to a prompt answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What "at once" means here: a tenth of the timeout, whatever the machine's load.
const PROMPT: Duration = Duration::from_millis(500);

async fn local(check: bool) -> Bus {
    Bus::builder()
        .check_subject_fields(check)
        .request_timeout(TIMEOUT)
        .connect()
        .await
        .unwrap()
}

async fn nats(server: &NatsServer, check: bool) -> Bus {
    let bus = Bus::builder()
        .nats([server.url()])
        .no_outbox()
        .check_subject_fields(check)
        .request_timeout(TIMEOUT)
        .connect()
        .await
        .unwrap();
    let mut state = bus.watch_state();
    tokio::time::timeout(
        TIMEOUT,
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("connected in time")
    .unwrap();
    bus
}

/// The handler every path registers: `Err` for the task "err", a panic for "panic".
async fn answer(req: bus::Envelope<Delegate>) -> Result<RouteReply, String> {
    match req.task.as_str() {
        "err" => Err("no route for this task".to_owned()),
        "panic" => panic!("the planner broke"),
        _ => Ok(RouteReply { accepted: true }),
    }
}

/// Requests to `agent` that fail and panic are answered at once with `Error::Remote` carrying
/// the handler's text; an ordinary one is accepted.
async fn failures_answered_at_once(bus: &Bus, agent: &str, path: &str) {
    for (task, expected) in [
        ("err", "no route for this task"),
        ("panic", "the planner broke"),
    ] {
        let started = Instant::now();
        let outcome = Delegate {
            agent: agent.into(),
            task: task.into(),
        }
        .request(bus)
        .await;
        let took = started.elapsed();
        match outcome {
            Err(Error::Remote { message, .. }) => assert!(
                message.contains(expected),
                "{path}, {task}: the remote error names the cause: {message:?}"
            ),
            other => panic!("{path}, {task}: expected Error::Remote, got {other:?}"),
        }
        assert!(
            took < PROMPT,
            "{path}, {task}: answered after {took:?}, not at once"
        );
    }
    let ok = Delegate {
        agent: agent.into(),
        task: "plan".into(),
    }
    .request(bus)
    .await
    .unwrap_or_else(|e| panic!("{path}: an ordinary request is answered: {e}"));
    assert!(ok.accepted);
}

/// `T::serve` and `Bus::serve`, each on its own agent.
async fn both_serve_paths(bus: &Bus, label: &str) {
    let typed = Delegate::serve(bus, Delegate::filter().agent("typed"), answer)
        .await
        .unwrap();
    let facade = bus
        .serve(Delegate::filter().agent("facade"), answer)
        .await
        .unwrap();
    failures_answered_at_once(bus, "typed", &format!("{label}, T::serve")).await;
    failures_answered_at_once(bus, "facade", &format!("{label}, Bus::serve")).await;
    typed.stop().await;
    facade.stop().await;
}

#[tokio::test]
async fn local_failures_answered_at_once_without_check() {
    both_serve_paths(&local(false).await, "local, unchecked").await;
}

#[tokio::test]
async fn local_failures_answered_at_once_with_check() {
    both_serve_paths(&local(true).await, "local, checked").await;
}

#[tokio::test]
async fn nats_failures_answered_at_once_without_check() {
    let server = NatsServer::start();
    both_serve_paths(&nats(&server, false).await, "nats, unchecked").await;
}

#[tokio::test]
async fn nats_failures_answered_at_once_with_check() {
    let server = NatsServer::start();
    both_serve_paths(&nats(&server, true).await, "nats, checked").await;
}

/// The service API's endpoint answers through the same responder, with and without the check.
#[tokio::test]
async fn service_failures_answered_at_once() {
    let server = NatsServer::start();
    for check in [false, true] {
        let bus = nats(&server, check).await;
        let service = Service::builder("planner", "1.0.0")
            .start(&bus)
            .await
            .unwrap();
        let endpoint = service
            .serve(Delegate::filter().agent("svc"), answer)
            .await
            .unwrap();
        failures_answered_at_once(&bus, "svc", &format!("service, check {check}")).await;
        endpoint.stop().await;
        service.stop().await;
    }
}

/// With the check on, a request whose body contradicts its subject is refused by every path
/// (the same check, in the one responder), and the handler never runs.
#[tokio::test]
async fn contradicting_request_refused_by_every_path() {
    let server = NatsServer::start();
    let bus = nats(&server, true).await;
    let service = Service::builder("planner", "1.0.0")
        .start(&bus)
        .await
        .unwrap();
    let refuse = |_: bus::Envelope<Delegate>| async move {
        panic!("the handler must not run for a contradicting request");
        #[allow(unreachable_code)]
        Ok::<RouteReply, String>(RouteReply { accepted: false })
    };
    let _facade = bus
        .serve(Delegate::filter().agent("facade"), refuse)
        .await
        .unwrap();
    let _endpoint = service
        .serve(Delegate::filter().agent("svc"), refuse)
        .await
        .unwrap();
    for agent in ["facade", "svc"] {
        // The body says another agent than the subject it is sent on.
        let payload = rmp_serde::to_vec_named(&Delegate {
            agent: "elsewhere".into(),
            task: "plan".into(),
        })
        .unwrap();
        let reply = bus
            .broker()
            .request(
                bus::RawMessage::new(format!("agent.route.{agent}"), payload),
                TIMEOUT,
            )
            .await
            .unwrap();
        let error = reply
            .headers
            .get(bus::headers::ERROR)
            .or_else(|| reply.headers.get("Nats-Service-Error"))
            .unwrap_or_else(|| panic!("{agent}: the refusal travels as an error header"));
        assert!(
            error.contains("agent"),
            "{agent}: the refusal names the field: {error:?}"
        );
    }
    service.stop().await;
}

/// Requests whose handler waits are answered concurrently, while one whose handler does not
/// wait is answered at once on the responder's own task: three requests meet at a barrier
/// inside the handler (answered one after the other, the first would wait for the others
/// forever and all three time out), and a quick request sent meanwhile is answered before the
/// barrier opens.
async fn waiting_handlers_answered_concurrently(bus: &Bus, label: &str) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
    let b = barrier.clone();
    let handle = Delegate::serve(bus, Delegate::filter().agent("meet"), move |req| {
        let b = b.clone();
        async move {
            if req.task == "meet" {
                b.wait().await;
            }
            Ok::<_, String>(RouteReply { accepted: true })
        }
    })
    .await
    .unwrap();
    let ask = |task: &str| {
        let req = Delegate {
            agent: "meet".into(),
            task: task.into(),
        };
        let bus = bus.clone();
        async move { req.request(&bus).await }
    };
    let meeting: Vec<_> = (0..3).map(|_| tokio::spawn(ask("meet"))).collect();
    let quick = ask("plan").await;
    assert!(
        quick
            .unwrap_or_else(|e| panic!("{label}: the quick request: {e}"))
            .accepted,
        "{label}"
    );
    for m in meeting {
        let reply = m.await.unwrap();
        assert!(
            reply
                .unwrap_or_else(|e| panic!("{label}: a waiting request: {e}"))
                .accepted,
            "{label}"
        );
    }
    handle.stop().await;
}

#[tokio::test]
async fn local_waiting_handlers_answered_concurrently() {
    waiting_handlers_answered_concurrently(&local(false).await, "local").await;
}

#[tokio::test]
async fn nats_waiting_handlers_answered_concurrently() {
    let server = NatsServer::start();
    waiting_handlers_answered_concurrently(&nats(&server, false).await, "nats").await;
}
