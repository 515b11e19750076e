//! Tally's end-to-end suite: every test drives the real HTTP API, through a real nats-server
//! and real Postgres, to the real workers.

mod harness;

mod admin;
mod commands;
mod concurrency;
mod crash;
mod credits;
mod holds;
mod idempotency;
mod isolation;
mod ops;
mod soak;
mod validation;
mod webhooks;
