//! Tally's end-to-end suite: every test drives the real HTTP API, through a real nats-server
//! and real Postgres, to the real workers.

mod harness;

mod abuse;
mod admin;
mod admin_events;
mod batches;
mod cluster;
mod commands;
mod concurrency;
mod crash;
mod credit_types;
mod credits;
mod dashboard_plans;
mod dead_letters;
mod deliveries;
mod events_api;
mod faults;
mod holds;
mod hostile_input;
mod idempotency;
mod isolation;
mod lot_conservation;
mod ops;
mod outbox;
mod plans;
mod rate_limits;
mod routing;
mod sdk;
mod sdk_plans;
mod secrets;
mod soak;
mod stripe_standin;
mod validation;
mod webhooks;
