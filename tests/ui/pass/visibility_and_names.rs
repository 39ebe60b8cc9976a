//! The filter type takes the message's visibility and can be named and stored; the derive works
//! on a unit struct, in a module, beside other derives, with a raw (keyword) field name.

mod messages {
    use bus::Message;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
    #[subject("plugin.inbound.<type>.<instance>")]
    pub(crate) struct Inbound {
        pub(crate) r#type: String,
        pub(crate) instance: String,
    }

    #[derive(Debug, Serialize, Deserialize, Message)]
    #[subject("plugin.health.tick")]
    pub struct Tick;
}

use bus::{Filter, Message};
use messages::{Inbound, InboundFilter, Tick, TickFilter};

struct Stored {
    filter: InboundFilter,
}

fn main() {
    let s = Stored {
        filter: Inbound::filter().r#type("text"),
    };
    assert_eq!(s.filter.pattern().unwrap(), "plugin.inbound.text.*");
    let t: TickFilter = Tick::filter();
    assert_eq!(t.pattern().unwrap(), "plugin.health.tick");
    assert_eq!(Tick.subject().unwrap(), "plugin.health.tick");
    let _ = format!("{:?}", TickFilter::default());
}
