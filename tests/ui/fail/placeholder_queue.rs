use bus::Message;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Message)]
#[subject("agent.events.<queue>")]
pub struct Job {
    pub queue: String,
}

fn main() {
    let _ = Job::filter().queue("workers");
}
