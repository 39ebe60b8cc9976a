//! The nats-server test harness. (to be written)
