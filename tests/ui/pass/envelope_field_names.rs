//! A message whose fields share their names with what an envelope knows (`subject`, `headers`,
//! `reply`, `body`): through the envelope the fields are the body's, the envelope's own facts are
//! its methods.

use bus::{Envelope, Message};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[subject("agent.events.<agent>")]
pub struct Mail {
    pub agent: String,
    pub subject: String,
    pub headers: Vec<String>,
    pub reply: Option<String>,
    pub body: String,
}

fn read(env: &Envelope<Mail>) -> (&str, &str, usize, Option<&str>, &str) {
    let _: &str = env.subject();
    let _: &bus::Headers = env.headers();
    let _: Option<&str> = env.reply_to();
    (
        &env.subject,
        &env.body,
        env.headers.len(),
        env.reply.as_deref(),
        &env.body().subject,
    )
}

fn main() {
    let mail = Mail {
        agent: "a".into(),
        subject: "hello".into(),
        headers: vec![],
        reply: None,
        body: "text".into(),
    };
    let env = Envelope::new(mail, "agent.events.a".into(), None, bus::Headers::new());
    let (subject, body, headers, reply, inner) = read(&env);
    assert_eq!((subject, body, headers, reply, inner), ("hello", "text", 0, None, "hello"));
}
