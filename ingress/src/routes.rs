//! HTTP handlers, one module per resource.

pub mod batch;
pub mod commands;
pub mod credits;
pub mod holds;
pub mod ops;
