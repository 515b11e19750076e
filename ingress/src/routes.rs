//! HTTP handlers, one module per resource.

pub mod alerts;
pub mod batch;
pub mod commands;
pub mod credits;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod holds;
pub mod ops;
pub mod plans;
