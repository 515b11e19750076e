//! Outbound events: `webhook_endpoints()`, `webhook_deliveries()`, `events()` and
//! `credits().alerts()`. Receiving them is [`crate::webhooks::verify`].

use std::fmt::Display;

use futures::{Stream, TryStreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::resources::{encode_path_segment, HISTORY_ALL_PAGE_SIZE};
use crate::types::*;
use crate::{decode, Client, Error};

/// No query parameters, no body.
pub(crate) const NOTHING: Option<&()> = None;

impl Client {
    /// A call that answers JSON, decoded as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: Option<&impl Serialize>,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let (status, answer) = self.request(method, path, params, body).await?;
        decode(status, answer)
    }
}

fn endpoint_path(id: impl Display) -> String {
    format!(
        "/webhook_endpoints/{}",
        encode_path_segment(&id.to_string())
    )
}

/// `client.webhook_endpoints()`.
#[derive(Clone, Copy, Debug)]
pub struct WebhookEndpoints<'a> {
    client: &'a Client,
}

impl<'a> WebhookEndpoints<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `POST /webhook_endpoints`: the endpoint with its `secret`, shown only now.
    pub async fn create(&self, params: &CreateEndpointParams) -> Result<Endpoint, Error> {
        let path = "/webhook_endpoints";
        self.client
            .json(Method::POST, path, NOTHING, Some(params))
            .await
    }

    /// `GET /webhook_endpoints`: every endpoint of the app, oldest first, without secrets.
    pub async fn list(&self) -> Result<Vec<Endpoint>, Error> {
        let listed: EndpointsResponse = self.client.get("/webhook_endpoints", &[]).await?;
        Ok(listed.endpoints)
    }

    /// `GET /webhook_endpoints/{id}`.
    pub async fn get(&self, id: impl Display) -> Result<Endpoint, Error> {
        self.client.get(&endpoint_path(id), &[]).await
    }

    /// `PATCH /webhook_endpoints/{id}`.
    pub async fn update(
        &self,
        id: impl Display,
        params: &UpdateEndpointParams,
    ) -> Result<Endpoint, Error> {
        let path = endpoint_path(id);
        self.client
            .json(Method::PATCH, &path, NOTHING, Some(params))
            .await
    }

    /// `DELETE /webhook_endpoints/{id}`: its pending deliveries are cancelled.
    pub async fn delete(&self, id: impl Display) -> Result<(), Error> {
        let path = endpoint_path(id);
        self.client
            .request(Method::DELETE, &path, NOTHING, NOTHING)
            .await?;
        Ok(())
    }

    /// `POST /webhook_endpoints/{id}/rotate_secret`: the new secret (shown only now); for 24 h
    /// deliveries are signed with both.
    pub async fn rotate_secret(&self, id: impl Display) -> Result<SecretResponse, Error> {
        let path = format!("{}/rotate_secret", endpoint_path(id));
        self.client
            .json(Method::POST, &path, NOTHING, NOTHING)
            .await
    }

    /// `POST /webhook_endpoints/{id}/test`: a `ping` event to this endpoint only.
    pub async fn test(&self, id: impl Display) -> Result<TestResponse, Error> {
        let path = format!("{}/test", endpoint_path(id));
        self.client
            .json(Method::POST, &path, NOTHING, NOTHING)
            .await
    }

    /// `GET /webhook_endpoints/{id}/deliveries`: one page, newest first.
    pub async fn deliveries(
        &self,
        id: impl Display,
        params: &DeliveriesParams,
    ) -> Result<DeliveriesResponse, Error> {
        let path = format!("{}/deliveries", endpoint_path(id));
        self.client
            .json(Method::GET, &path, Some(params), NOTHING)
            .await
    }
}

/// `client.webhook_deliveries()`.
#[derive(Clone, Copy, Debug)]
pub struct WebhookDeliveries<'a> {
    client: &'a Client,
}

impl<'a> WebhookDeliveries<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `POST /webhook_deliveries/{id}/redeliver`: the same event (same `webhook-id`) is sent
    /// again now, as a new attempt of this delivery; the delivery, `pending` again.
    pub async fn redeliver(&self, id: impl Display) -> Result<Delivery, Error> {
        let path = format!(
            "/webhook_deliveries/{}/redeliver",
            encode_path_segment(&id.to_string())
        );
        self.client
            .json(Method::POST, &path, NOTHING, NOTHING)
            .await
    }
}

/// `client.events()`.
#[derive(Clone, Copy, Debug)]
pub struct Events<'a> {
    client: &'a Client,
}

impl<'a> Events<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `GET /events`: one page, newest first.
    pub async fn list(&self, params: &EventsParams) -> Result<EventsResponse, Error> {
        self.client
            .json(Method::GET, "/events", Some(params), NOTHING)
            .await
    }

    /// Every event `params` selects, newest first, following `next_cursor` page after page
    /// (200 a page unless `params.limit` says).
    pub fn list_all(
        &self,
        params: EventsParams,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        let client = self.client.clone();
        let first = EventsParams {
            limit: params.limit.or(Some(HISTORY_ALL_PAGE_SIZE)),
            ..params
        };
        futures::stream::try_unfold(Some(first), move |next| {
            let client = client.clone();
            async move {
                let Some(params) = next else {
                    return Ok(None);
                };
                let page = client.events().list(&params).await?;
                let next = page.next_cursor.map(|cursor| EventsParams {
                    cursor: Some(cursor),
                    ..params
                });
                Ok(Some((page.events, next)))
            }
        })
        .map_ok(|events| futures::stream::iter(events.into_iter().map(Ok)))
        .try_flatten()
    }

    /// `GET /events/{id}`.
    pub async fn get(&self, id: impl Display) -> Result<Event, Error> {
        let path = format!("/events/{}", encode_path_segment(&id.to_string()));
        self.client.get(&path, &[]).await
    }
}

/// `client.credits().alerts()`: the thresholds below which `balance.low` fires.
#[derive(Clone, Copy, Debug)]
pub struct Alerts<'a> {
    client: &'a Client,
}

impl<'a> Alerts<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `PUT /credits/alerts`: the app's default list (without `user_id`) or a user's own.
    pub async fn set(&self, params: &AlertsParams) -> Result<AlertsResponse, Error> {
        self.client
            .json(Method::PUT, "/credits/alerts", NOTHING, Some(params))
            .await
    }

    /// `GET /credits/alerts`: the list that applies and its `source`.
    pub async fn get(&self, query: &AlertsQuery) -> Result<EffectiveAlerts, Error> {
        self.client
            .json(Method::GET, "/credits/alerts", Some(query), NOTHING)
            .await
    }

    /// `DELETE /credits/alerts`: drops a user's own list (the app's default applies again), or
    /// without `user_id` the app's default.
    pub async fn delete(&self, query: &AlertsQuery) -> Result<(), Error> {
        self.client
            .request(Method::DELETE, "/credits/alerts", Some(query), NOTHING)
            .await?;
        Ok(())
    }
}
