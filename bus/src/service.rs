//! Discoverable services: request types announced through the NATS service API, so that
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (and `nats micro ls`) list them.
//!
//! Opt-in: a [`Service`] is started once per process with a name and a version, and each
//! request type it answers is one endpoint of it, named after the type, on the subject its
//! filter stands for. Requests are answered through the endpoint, so the service API counts
//! them (requests, errors, processing time). Only on NATS: the service API is a NATS protocol.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
use futures::StreamExt;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::handle::Bus;
use crate::message::{Filter, Request};
use crate::nats::convert::from_header_map;
use crate::nats::NatsBroker;
use crate::panic::lock;
use crate::raw::RawMessage;
use crate::respond::Responder;
use crate::stop::Running;

/// A service registered with the NATS service API. Its request types are added with
/// [`serve`](Service::serve).
///
/// ```no_run
/// # use bus::Message;
/// # #[derive(serde::Serialize, serde::Deserialize, Message)]
/// # #[subject("agent.route.<agent>")]
/// # #[reply(RouteReply)]
/// # struct Delegate { agent: String, task: String }
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct RouteReply { accepted: bool }
/// # async fn run(bus: &bus::Bus) -> Result<(), bus::Error> {
/// let service = bus::service::Service::builder("planner", "1.0.0")
///     .description("plans the agents' work")
///     .start(bus)
///     .await?;
/// service
///     .serve(Delegate::filter(), |req| async move {
///         Ok::<_, bus::Error>(RouteReply { accepted: !req.task.is_empty() })
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Service {
    service: service::Service,
    name: String,
    /// The bus's subject/body check, applied to every request (as by [`Bus::serve`]).
    check: bool,
    /// Stopped endpoints, kept until the service stops: async-nats 0.35's `Service::stop`
    /// fails (and leaves the `$SRV` responder running) once no endpoint is alive.
    parked: Arc<std::sync::Mutex<Vec<service::endpoint::Endpoint>>>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How to start a [`Service`]: its name, version and description.
#[derive(Debug, Clone)]
#[must_use = "a service builder does nothing until `start` is called"]
pub struct ServiceBuilder {
    name: String,
    version: String,
    description: Option<String>,
}

impl ServiceBuilder {
    setters! {
        /// What `$SRV.INFO` says the service does.
        fn description(text: impl Into<String>) => description = Some(text.into());
    }

    /// Registers the service on `bus`'s NATS connection (it answers `$SRV.PING`, `$SRV.INFO`
    /// and `$SRV.STATS` from now on). Fails with [`Error::Config`] on a bus that is not on
    /// NATS, or for a name or version the service API refuses (a name is letters, digits,
    /// `-` and `_`; a version is semantic, `1.0.0`).
    pub async fn start(self, bus: &Bus) -> Result<Service> {
        let broker: Arc<dyn std::any::Any + Send + Sync> = bus.broker();
        let Ok(nats) = broker.downcast::<NatsBroker>() else {
            return Err(Error::Config(
                "the NATS service API needs a bus on NATS (`Bus::builder().nats([..])`)".into(),
            ));
        };
        let mut builder = nats.client().service_builder();
        if let Some(d) = &self.description {
            builder = builder.description(d);
        }
        let (name, version) = (self.name, self.version);
        let service = builder
            .start(name.clone(), version.clone())
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "cannot start the service {name:?} (version {version:?}): {e}"
                ))
            })?;
        Ok(Service {
            service,
            name,
            check: bus.checks_subject_fields(),
            parked: Arc::default(),
        })
    }
}

impl Service {
    /// A builder for a service named `name` at `version`.
    pub fn builder(name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            name: name.into(),
            version: version.into(),
            description: None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers requests of type `M` that `filter` selects, as an endpoint of this service:
    /// named after the type, on the filter's pattern, in the filter's queue group (default:
    /// the service API's `q`), with the template and reply type as metadata
    /// (`bus.template`, `bus.reply`). Like [`Bus::serve`], a handler's `Err` (or panic)
    /// reaches the requester as [`Error::Remote`]; here it travels as the service API's
    /// `Nats-Service-Error` header, which the service API counts as an error.
    pub async fn serve<M, F, Fut, E>(
        &self,
        filter: impl Filter<Message = M>,
        handler: F,
    ) -> Result<Endpoint>
    where
        M: Request,
        F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let pattern = filter.pattern()?;
        let reply = std::any::type_name::<M::Reply>().to_owned();
        let metadata = HashMap::from([
            ("bus.template".to_owned(), M::SUBJECT.to_owned()),
            ("bus.reply".to_owned(), reply),
        ]);
        let mut builder = self
            .service
            .endpoint_builder()
            .name(M::TYPE_NAME)
            .metadata(metadata);
        if let Some(q) = filter.queue_group() {
            builder = builder.queue_group(q);
        }
        let mut requests = builder.add(pattern.clone()).await.map_err(|e| {
            Error::Config(format!(
                "cannot add the endpoint {} on {pattern}: {e}",
                M::TYPE_NAME
            ))
        })?;
        let responder = Arc::new(Responder::new(handler, self.check));
        let parked = Arc::clone(&self.parked);
        let running = Running::spawn(move |mut stopped, in_flight| async move {
            loop {
                let next = tokio::select! {
                    _ = stopped.wait_for(|s| *s) => None,
                    r = requests.next() => r,
                };
                let Some(request) = next else { break };
                in_flight.spawn(answer(request, Arc::clone(&responder)));
            }
            let _ = requests.stop().await;
            in_flight.wait().await;
            lock(&parked).push(requests);
        });
        Ok(Endpoint {
            what: format!("service endpoint `{}`", M::TYPE_NAME),
            running,
        })
    }

    /// Unregisters the service: it stops answering `$SRV` requests and every endpoint ends
    /// (after answering the requests it took). Like every stop in `bus`, it returns when that is
    /// done; what cannot be undone (the server gone) is logged, not returned.
    pub async fn stop(self) {
        if let Err(e) = self.service.stop().await {
            tracing::warn!(service = %self.name, error = %e, "cannot unregister the service");
        }
        lock(&self.parked).clear();
    }
}

/// Answers one request through the service API, with the bus's one [`Responder`].
async fn answer<M, F, Fut, E>(request: service::Request, responder: Arc<Responder<M, F>>)
where
    M: Request,
    F: Fn(Envelope<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<M::Reply, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let msg = &request.message;
    let Some(reply) = &msg.reply else {
        tracing::debug!(subject = %msg.subject, "request without reply subject ignored");
        return;
    };
    let raw = RawMessage {
        subject: msg.subject.to_string(),
        reply: Some(reply.to_string()),
        headers: msg
            .headers
            .as_ref()
            .map(from_header_map)
            .unwrap_or_default(),
        payload: msg.payload.clone(),
    };
    responder
        .answer(raw, |outcome| async move {
            let response = outcome.map_err(|status| service::error::Error { status, code: 500 });
            if let Err(e) = request.respond(response).await {
                tracing::warn!(error = %e, "cannot send reply");
            }
        })
        .await
}

/// A running endpoint of a [`Service`] (from [`Service::serve`]). Dropping it leaves it
/// running; [`stop`](Endpoint::stop) ends it (`$SRV.INFO` keeps listing it, as async-nats
/// does, until the service stops).
#[derive(Debug)]
pub struct Endpoint {
    what: String,
    running: Running,
}

impl Endpoint {
    /// Stops answering (unsubscribes) and waits until every request already taken was
    /// answered.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// [`stop`](Endpoint::stop), waiting at most `timeout` for the requests already taken;
    /// past it they are abandoned and the error says how many.
    pub async fn stop_timeout(self, timeout: std::time::Duration) -> Result<()> {
        self.running.stop_timeout(&self.what, timeout).await
    }

    /// Whether the endpoint is still answering.
    pub fn is_running(&self) -> bool {
        self.running.is_running()
    }
}
