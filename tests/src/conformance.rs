//! The broker conformance suite: free async functions taking `&dyn Broker`. (to be written)
