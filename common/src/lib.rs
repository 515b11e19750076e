//! The wire contract between Tally's ingress and workers, and what every binary shares:
//! commands and their results, the partition hash, subject names, error codes, configuration,
//! database migrations and broker provisioning.

pub mod apikey;
pub mod apps;
pub mod broker;
pub mod command;
pub mod config;
pub mod credit_type;
pub mod db;
pub mod error_code;
pub mod events;
pub mod group;
pub mod limits;
pub mod outbound;
pub mod partition;
pub mod plans;
pub mod routing;
pub mod telemetry;
pub mod webhook;
