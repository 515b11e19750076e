//! A write request on its way into the pipeline: its JSON body read first, then, once its
//! handler has checked the fields and built the command, submitted ([`crate::submit`]) with the
//! request's `Idempotency-Key` and `Prefer`.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value};
use tally_common::command::Command;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::submit::{submit, Submission};
use crate::validate;
use crate::AppState;

/// A write request read so far: who, its headers, and its JSON object.
pub(crate) struct WriteRequest {
    /// The caller's app, which the command belongs to.
    pub(crate) auth: Auth,
    /// Read at submission for `Idempotency-Key` and `Prefer`.
    headers: HeaderMap,
    /// Part of the idempotency hash, so one key sent to two endpoints is a conflict.
    path: &'static str,
    /// The body, which the handler reads its fields from; hashed as it was sent.
    pub(crate) object: Map<String, Value>,
}

impl WriteRequest {
    pub(crate) async fn read(
        auth: Auth,
        headers: HeaderMap,
        body: Body,
        path: &'static str,
    ) -> Result<Self, ApiError> {
        let object = validate::json_object(&headers, body).await?;
        Ok(Self {
            auth,
            headers,
            path,
            object,
        })
    }

    pub(crate) async fn submit(
        self,
        state: &AppState,
        command: Command,
    ) -> Result<Response, ApiError> {
        let key = validate::idempotency_key(&self.headers)?;
        let idempotency =
            key.map(|key| (key, validate::request_hash("POST", self.path, &self.object)));
        submit(
            state,
            Submission {
                app_id: self.auth.app_id,
                command,
                idempotency,
                respond_async: validate::prefers_async(&self.headers),
                origin: Default::default(),
            },
        )
        .await
    }
}
