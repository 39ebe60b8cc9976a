use bus::Message;

#[derive(Message)]
#[subject("plugin.outbound.<channel>")]
pub struct Outbound {
    pub channel: String,
}

fn main() {}
