use bus::{Envelope, Filter, Message, Request};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.route.<agent>")]
#[reply(RouteReply)]
pub struct Delegate {
    pub agent: String,
    pub task: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RouteReply {
    pub accepted: bool,
}

/// A standard type as the reply, and a path to it.
#[derive(Debug, Serialize, Deserialize, Message)]
#[subject("agent.route.ping")]
#[reply(std::vec::Vec<u8>)]
pub struct Ping {}

#[allow(dead_code)]
async fn call_sites(bus: &bus::Bus) -> Result<(), bus::Error> {
    let reply: Envelope<RouteReply> = Delegate {
        agent: "planner".into(),
        task: "t".into(),
    }
    .request(bus)
    .await?;
    let _accepted: bool = reply.accepted;
    let handle = Delegate::serve(bus, Delegate::filter().queue("planners"), |req| async move {
        Ok::<_, bus::Error>(RouteReply {
            accepted: req.task == "t",
        })
    })
    .await?;
    handle.stop().await;
    let _ = Ping::serve(bus, Ping::filter(), |_req: Envelope<Ping>| async {
        Err::<Vec<u8>, _>("not today")
    })
    .await?;
    let _bytes: Envelope<Vec<u8>> = Ping {}.request(bus).await?;
    Ok(())
}

fn reply_of<R: Request>() -> &'static str {
    std::any::type_name::<R::Reply>()
}

fn main() {
    assert!(reply_of::<Delegate>().ends_with("RouteReply"));
    assert_eq!(Ping::filter().pattern().unwrap(), "agent.route.ping");
}
