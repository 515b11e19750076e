//! The HTTP API of outbound events: endpoints and their secrets, the events log, deliveries
//! (a test ping, the list, a redelivery) and balance alerts. Workers' deliveries are not
//! exercised here (no worker runs): these tests check the records the API keeps and the
//! messages it hands to the delivery stream.

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use tally_common::events::DeliveryMessage;
use tally_common::partition::Names;
use uuid::Uuid;

use crate::harness::{create_app, spawn_app_with, Options, TestApp};

/// A deployment without workers: nothing consumes the delivery stream.
async fn spawn() -> TestApp {
    spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await
}

/// [`spawn`], with `TALLY_WEBHOOK_ALLOW_PRIVATE=true`.
async fn spawn_allowing_private() -> TestApp {
    spawn_app_with(Options {
        workers: 0,
        ingress: |config| config.common.webhook_allow_private = true,
        ..Options::default()
    })
    .await
}

/// A public address literal (no name to resolve: the tests run without DNS).
fn public_url(path: &str) -> String {
    format!("https://93.184.215.14/{path}")
}

/// A request with `key`, and a JSON body if any; the status and the JSON answer.
async fn send(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    app.send(method, path, body).await
}

async fn create_endpoint(app: &TestApp, body: Value) -> Value {
    let (status, endpoint) = send(app, Method::POST, "/webhook_endpoints", Some(body)).await;
    assert_eq!(status, 201, "{endpoint}");
    endpoint
}

async fn endpoint_id(app: &TestApp, path: &str) -> String {
    let endpoint = create_endpoint(app, json!({ "url": public_url(path) })).await;
    endpoint["id"].as_str().expect("id").to_string()
}

/// Sends a test ping to the endpoint; its event id.
async fn ping(app: &TestApp, endpoint_id: &str) -> String {
    let (status, body) = send(
        app,
        Method::POST,
        &format!("/webhook_endpoints/{endpoint_id}/test"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body["event_id"].as_str().expect("event_id").to_string()
}

async fn deliveries(app: &TestApp, endpoint_id: &str, query: &str) -> Vec<Value> {
    let (status, body) = send(
        app,
        Method::GET,
        &format!("/webhook_endpoints/{endpoint_id}/deliveries{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().expect("deliveries").clone()
}

/// The app's event configuration version (`None` before its first change).
async fn config_version(app: &TestApp) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM app_event_config WHERE app_id = $1")
        .bind(app.app_id)
        .fetch_optional(&app.pool)
        .await
        .expect("version")
}

/// Every message on the delivery stream: its `Nats-Msg-Id` and its payload.
async fn delivery_messages(app: &TestApp) -> Vec<(Option<String>, DeliveryMessage)> {
    let client = async_nats::connect(&app.nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(Names::new(&app.namespace).delivery_stream())
        .await
        .expect("delivery stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let message = stream.get_raw_message(sequence).await.expect("message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.as_str().to_string());
        let payload = serde_json::from_slice(&message.payload).expect("a delivery message");
        messages.push((id, payload));
    }
    messages
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

mod endpoints {
    use super::*;

    #[tokio::test]
    async fn a_created_endpoint_shows_its_secret_once() {
        let app = spawn().await;
        let created = create_endpoint(
            &app,
            json!({ "url": public_url("tally"), "description": "billing" }),
        )
        .await;
        assert_eq!(created["url"], public_url("tally"));
        assert_eq!(created["events"], json!(["*"]));
        assert_eq!(created["description"], "billing");
        assert_eq!(created["enabled"], true);
        assert!(created["created_at"].is_string());
        let secret = created["secret"].as_str().expect("secret");
        let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        assert!(bytes.len() >= 24, "{secret}");

        let id = created["id"].as_str().unwrap();
        let (status, one) =
            send(&app, Method::GET, &format!("/webhook_endpoints/{id}"), None).await;
        assert_eq!(status, 200, "{one}");
        assert!(one.get("secret").is_none(), "{one}");
        assert_eq!(one["url"], created["url"]);
        let (status, list) = send(&app, Method::GET, "/webhook_endpoints", None).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["endpoints"].as_array().unwrap().len(), 1);
        assert!(list["endpoints"][0].get("secret").is_none(), "{list}");
        assert_eq!(list["endpoints"][0]["id"], id);
    }

    #[tokio::test]
    async fn an_endpoint_subscribes_to_the_types_it_names() {
        let app = spawn().await;
        let created = create_endpoint(
            &app,
            json!({ "url": public_url("low"), "events": ["balance.low", "credits.added", "balance.low"] }),
        )
        .await;
        assert_eq!(created["events"], json!(["balance.low", "credits.added"]));
        assert_eq!(created["description"], Value::Null);
    }

    #[tokio::test]
    async fn an_update_changes_what_it_names_and_null_clears_the_description() {
        let app = spawn().await;
        let created = create_endpoint(
            &app,
            json!({ "url": public_url("a"), "description": "first" }),
        )
        .await;
        let path = format!("/webhook_endpoints/{}", created["id"].as_str().unwrap());
        let (status, updated) = send(
            &app,
            Method::PATCH,
            &path,
            Some(json!({ "url": public_url("b"), "events": ["hold.expired"], "enabled": false })),
        )
        .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["url"], public_url("b"));
        assert_eq!(updated["events"], json!(["hold.expired"]));
        assert_eq!(updated["enabled"], false);
        assert_eq!(updated["description"], "first");
        assert!(updated.get("secret").is_none());

        let (status, cleared) = send(
            &app,
            Method::PATCH,
            &path,
            Some(json!({ "description": null })),
        )
        .await;
        assert_eq!(status, 200, "{cleared}");
        assert_eq!(cleared["description"], Value::Null);
        assert_eq!(cleared["url"], public_url("b"));
        let (_, read) = send(&app, Method::GET, &path, None).await;
        assert_eq!(read, cleared);
    }

    #[tokio::test]
    async fn a_deleted_endpoint_is_gone_and_its_pending_deliveries_are_cancelled() {
        let app = spawn().await;
        let id = endpoint_id(&app, "gone").await;
        ping(&app, &id).await;
        let path = format!("/webhook_endpoints/{id}");
        let (status, body) = send(&app, Method::DELETE, &path, None).await;
        assert_eq!(status, 204, "{body}");
        assert_eq!(body, Value::String(String::new()));

        for (method, path) in [
            (Method::GET, path.clone()),
            (Method::PATCH, path.clone()),
            (Method::DELETE, path.clone()),
            (Method::POST, format!("{path}/rotate_secret")),
            (Method::POST, format!("{path}/test")),
            (Method::GET, format!("{path}/deliveries")),
        ] {
            let body = (method == Method::PATCH).then(|| json!({}));
            let (status, answer) = send(&app, method.clone(), &path, body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert_eq!(answer["error"], "not_found");
        }
        let (_, list) = send(&app, Method::GET, "/webhook_endpoints", None).await;
        assert_eq!(list["endpoints"], json!([]));
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM webhook_deliveries")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        assert_eq!(statuses, ["cancelled"]);
        let kept: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_endpoints WHERE deleted_at IS NOT NULL",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(kept, 1, "a deleted endpoint is kept for its deliveries");
    }

    #[tokio::test]
    async fn a_rotated_secret_keeps_the_previous_one_for_a_day() {
        let app = spawn().await;
        let created = create_endpoint(&app, json!({ "url": public_url("rotate") })).await;
        let id = created["id"].as_str().unwrap();
        let (status, rotated) = send(
            &app,
            Method::POST,
            &format!("/webhook_endpoints/{id}/rotate_secret"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{rotated}");
        let secret = rotated["secret"].as_str().expect("secret");
        assert!(secret.starts_with("whsec_"));
        assert_ne!(secret, created["secret"].as_str().unwrap());
        let (stored, previous, hours): (String, Option<String>, f64) = sqlx::query_as(
            "SELECT secret, previous_secret,
                    extract(epoch FROM previous_secret_until - now())::float8 / 3600
             FROM webhook_endpoints WHERE id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored, secret);
        assert_eq!(previous.as_deref(), created["secret"].as_str());
        assert!((23.9..=24.0).contains(&hours), "{hours}");
    }

    #[tokio::test]
    async fn an_app_has_at_most_16_endpoints() {
        let app = spawn().await;
        let mut ids = Vec::new();
        for n in 0..16 {
            ids.push(endpoint_id(&app, &format!("e{n}")).await);
        }
        let (status, body) = send(
            &app,
            Method::POST,
            "/webhook_endpoints",
            Some(json!({ "url": public_url("e16") })),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(count(&app, "webhook_endpoints").await, 16);

        let (status, _) = send(
            &app,
            Method::DELETE,
            &format!("/webhook_endpoints/{}", ids[0]),
            None,
        )
        .await;
        assert_eq!(status, 204);
        endpoint_id(&app, "e16").await;
    }

    #[tokio::test]
    async fn bad_endpoint_bodies_are_400_naming_the_field_and_write_nothing() {
        let app = spawn().await;
        let version = config_version(&app).await;
        let url = public_url("x");
        let cases = [
            (json!({}), "url"),
            (json!({ "url": 5 }), "url"),
            (json!({ "url": "not a url" }), "url"),
            (json!({ "url": "ftp://93.184.215.14/" }), "url"),
            (json!({ "url": "http://93.184.215.14/" }), "url"),
            (
                json!({ "url": format!("https://93.184.215.14/{}", "a".repeat(2048)) }),
                "url",
            ),
            (json!({ "url": "https://user:pass@93.184.215.14/" }), "url"),
            (json!({ "url": "https://no-such-host.invalid/hook" }), "url"),
            (json!({ "url": url, "events": "balance.low" }), "events"),
            (json!({ "url": url, "events": [] }), "events"),
            (json!({ "url": url, "events": ["balance.high"] }), "events"),
            (json!({ "url": url, "events": ["ping"] }), "events"),
            (
                json!({ "url": url, "events": ["*", "balance.low"] }),
                "events",
            ),
            (json!({ "url": url, "events": [7] }), "events"),
            (
                json!({ "url": url, "description": "d".repeat(1001) }),
                "description",
            ),
            (json!({ "url": url, "description": 5 }), "description"),
            (json!({ "url": url, "enabled": true }), "enabled"),
            (json!({ "url": url, "evnets": ["*"] }), "evnets"),
        ];
        for (body, field) in cases {
            let (status, answer) =
                send(&app, Method::POST, "/webhook_endpoints", Some(body.clone())).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"], "invalid_request", "{body}");
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
        assert_eq!(count(&app, "webhook_endpoints").await, 0);
        assert_eq!(config_version(&app).await, version);

        let id = endpoint_id(&app, "patched").await;
        let version = config_version(&app).await;
        let path = format!("/webhook_endpoints/{id}");
        for (body, field) in [
            (json!({ "url": "https://10.0.0.1/" }), "url"),
            (json!({ "events": ["nope"] }), "events"),
            (json!({ "description": "d".repeat(1001) }), "description"),
            (json!({ "enabled": "yes" }), "enabled"),
            (json!({ "secret": "whsec_x" }), "secret"),
        ] {
            let (status, answer) = send(&app, Method::PATCH, &path, Some(body.clone())).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
        let (_, read) = send(&app, Method::GET, &path, None).await;
        assert_eq!(read["url"], public_url("patched"));
        assert_eq!(config_version(&app).await, version);

        for path in [
            "/webhook_endpoints/nope",
            "/webhook_endpoints/nope/deliveries",
            "/events/nope",
        ] {
            let (status, answer) = send(&app, Method::GET, path, None).await;
            assert_eq!(status, 400, "{path}: {answer}");
            assert_eq!(answer["field"], "id", "{path}: {answer}");
        }
    }

    #[tokio::test]
    async fn private_urls_are_refused_unless_the_deployment_allows_them() {
        let app = spawn().await;
        for url in [
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://localhost/hook",
            "http://127.0.0.1:9/hook",
        ] {
            let (status, answer) = send(
                &app,
                Method::POST,
                "/webhook_endpoints",
                Some(json!({ "url": url })),
            )
            .await;
            assert_eq!(status, 400, "{url}: {answer}");
            assert_eq!(answer["field"], "url", "{url}: {answer}");
        }

        let allowing = spawn_allowing_private().await;
        let created = create_endpoint(&allowing, json!({ "url": "http://127.0.0.1:9/hook" })).await;
        assert_eq!(created["url"], "http://127.0.0.1:9/hook");
        let (status, updated) = send(
            &allowing,
            Method::PATCH,
            &format!("/webhook_endpoints/{}", created["id"].as_str().unwrap()),
            Some(json!({ "url": "https://localhost:8443/hook" })),
        )
        .await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["url"], "https://localhost:8443/hook");
    }

    #[tokio::test]
    async fn every_change_bumps_the_event_configuration_version() {
        let app = spawn().await;
        assert_eq!(config_version(&app).await, None);
        let id = endpoint_id(&app, "v").await;
        assert_eq!(config_version(&app).await, Some(1));
        let path = format!("/webhook_endpoints/{id}");
        let changes = [
            (
                Method::PATCH,
                path.clone(),
                Some(json!({ "enabled": false })),
            ),
            (Method::POST, format!("{path}/rotate_secret"), None),
            (Method::DELETE, path.clone(), None),
            (
                Method::PUT,
                "/credits/alerts".to_string(),
                Some(json!({ "thresholds": [100] })),
            ),
            (Method::DELETE, "/credits/alerts".to_string(), None),
        ];
        for (expected, (method, path, body)) in (2..).zip(changes) {
            let (status, answer) = send(&app, method.clone(), &path, body).await;
            assert!(status < 300, "{method} {path}: {status} {answer}");
            assert_eq!(
                config_version(&app).await,
                Some(expected),
                "{method} {path}"
            );
        }
        // Reads and a delete of nothing change nothing.
        send(&app, Method::GET, "/webhook_endpoints", None).await;
        send(&app, Method::DELETE, "/credits/alerts?user_id=u1", None).await;
        assert_eq!(config_version(&app).await, Some(6));
    }
}

mod events {
    use super::*;

    /// Records an event of a user directly (the worker's part), `seconds_ago` old.
    async fn record(app: &TestApp, user_id: &str, event_type: &str, seconds_ago: i64) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO events (id, app_id, user_id, type, sequence, data, created_at)
             VALUES ($1, $2, $3, $4, 1, $5, now() - make_interval(secs => $6))",
        )
        .bind(id)
        .bind(app.app_id)
        .bind(user_id)
        .bind(event_type)
        .bind(json!({ "threshold": 100, "balance": 5, "held": 0, "available": 5 }))
        .bind(seconds_ago as f64)
        .execute(&app.pool)
        .await
        .expect("event");
        id
    }

    async fn list(app: &TestApp, query: &str) -> (u16, Value) {
        send(app, Method::GET, &format!("/events{query}"), None).await
    }

    #[tokio::test]
    async fn a_test_ping_is_an_event_of_no_user_readable_by_id() {
        let app = spawn().await;
        let endpoint = endpoint_id(&app, "ping").await;
        let first = ping(&app, &endpoint).await;
        let second = ping(&app, &endpoint).await;

        let (status, event) = send(&app, Method::GET, &format!("/events/{first}"), None).await;
        assert_eq!(status, 200, "{event}");
        assert_eq!(event["id"], first);
        assert_eq!(event["type"], "ping");
        assert_eq!(event["app_id"], app.app_id.to_string());
        assert_eq!(event["user_id"], Value::Null);
        assert_eq!(event["data"], json!({}));
        assert_eq!(event["sequence"], 1);
        assert!(event["created_at"].is_string());
        let (_, event) = send(&app, Method::GET, &format!("/events/{second}"), None).await;
        assert_eq!(event["sequence"], 2);

        let (status, page) = list(&app, "?type=ping").await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<&str> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
        assert_eq!(page["next_cursor"], Value::Null);
        let (status, unknown) = send(
            &app,
            Method::GET,
            &format!("/events/{}", Uuid::now_v7()),
            None,
        )
        .await;
        assert_eq!(status, 404, "{unknown}");
    }

    #[tokio::test]
    async fn events_filter_by_type_and_user_and_page_newest_first() {
        let app = spawn().await;
        let mut ids = Vec::new();
        for seconds_ago in (1..=5).rev() {
            ids.push(record(&app, "u1", "balance.low", seconds_ago).await);
        }
        let other = record(&app, "u2", "balance.depleted", 0).await;

        let (_, page) = list(&app, "?user_id=u2").await;
        assert_eq!(page["events"].as_array().unwrap().len(), 1);
        assert_eq!(page["events"][0]["id"], other.to_string());
        assert_eq!(page["events"][0]["data"]["threshold"], 100);
        let (_, page) = list(&app, "?type=balance.depleted&user_id=u1").await;
        assert_eq!(page["events"], json!([]));

        let mut seen = Vec::new();
        let mut query = "?type=balance.low&limit=2".to_string();
        loop {
            let (status, page) = list(&app, &query).await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= 2);
            seen.extend(
                events
                    .iter()
                    .map(|event| event["id"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => query = format!("?type=balance.low&limit=2&cursor={cursor}"),
                None => break,
            }
        }
        let newest_first: Vec<String> = ids.iter().rev().map(Uuid::to_string).collect();
        assert_eq!(seen, newest_first);

        for (query, field) in [
            ("?type=balance.high", "type"),
            ("?limit=0", "limit"),
            ("?limit=201", "limit"),
            ("?cursor=bogus", "cursor"),
            ("?user_id=", "user_id"),
        ] {
            let (status, answer) = list(&app, query).await;
            assert_eq!(status, 400, "{query}: {answer}");
            assert_eq!(answer["field"], field, "{query}: {answer}");
        }
    }
}

mod deliveries {
    use super::*;

    #[tokio::test]
    async fn a_test_ping_is_one_pending_delivery_handed_to_the_delivery_stream() {
        let app = spawn().await;
        let endpoint = endpoint_id(&app, "deliveries").await;
        let other = endpoint_id(&app, "other").await;
        let event_id = ping(&app, &endpoint).await;

        let listed = deliveries(&app, &endpoint, "").await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        let delivery = &listed[0];
        assert_eq!(delivery["event_id"], event_id);
        assert_eq!(delivery["event_type"], "ping");
        assert_eq!(delivery["status"], "pending");
        assert_eq!(delivery["attempts"], 0);
        for field in ["last_attempt_at", "last_status_code", "last_error"] {
            assert_eq!(delivery[field], Value::Null, "{field}");
        }
        assert!(delivery["next_attempt_at"].is_string());
        assert_eq!(
            deliveries(&app, &endpoint, "?status=pending").await.len(),
            1
        );
        assert_eq!(
            deliveries(&app, &endpoint, "?status=succeeded").await.len(),
            0
        );
        assert_eq!(
            deliveries(&app, &other, "").await.len(),
            0,
            "a ping goes to its endpoint only"
        );

        let relayed: bool = sqlx::query_scalar("SELECT relayed FROM events WHERE id = $1::uuid")
            .bind(&event_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert!(relayed, "the test's delivery is written with its event");
        let delivery_id: Uuid = delivery["id"].as_str().unwrap().parse().unwrap();
        let messages = delivery_messages(&app).await;
        assert_eq!(
            messages,
            [(
                Some(delivery_id.to_string()),
                DeliveryMessage {
                    delivery_id,
                    redeliver: false
                }
            )]
        );

        let path = format!("/webhook_endpoints/{endpoint}/deliveries");
        for (query, field) in [
            ("?status=cancelled", "status"),
            ("?limit=0", "limit"),
            ("?cursor=x", "cursor"),
        ] {
            let (status, answer) = send(&app, Method::GET, &format!("{path}{query}"), None).await;
            assert_eq!(status, 400, "{query}: {answer}");
            assert_eq!(answer["field"], field, "{query}: {answer}");
        }
    }

    #[tokio::test]
    async fn deliveries_page_newest_first() {
        let app = spawn().await;
        let endpoint = endpoint_id(&app, "paged").await;
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(ping(&app, &endpoint).await);
        }
        let first = deliveries(&app, &endpoint, "?limit=2").await;
        let (_, page) = send(
            &app,
            Method::GET,
            &format!("/webhook_endpoints/{endpoint}/deliveries?limit=2"),
            None,
        )
        .await;
        let cursor = page["next_cursor"].as_str().expect("a next page");
        let second = deliveries(&app, &endpoint, &format!("?limit=2&cursor={cursor}")).await;
        let seen: Vec<&Value> = first
            .iter()
            .chain(&second)
            .map(|d| &d["event_id"])
            .collect();
        let newest_first: Vec<Value> = events.iter().rev().map(|id| json!(id)).collect();
        assert_eq!(seen, newest_first.iter().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_redelivery_sets_the_delivery_pending_and_is_never_deduplicated() {
        let app = spawn().await;
        let endpoint = endpoint_id(&app, "again").await;
        ping(&app, &endpoint).await;
        let delivery_id: Uuid = deliveries(&app, &endpoint, "").await[0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', attempts = 8, next_attempt_at = NULL
             WHERE id = $1",
        )
        .bind(delivery_id)
        .execute(&app.pool)
        .await
        .unwrap();

        let path = format!("/webhook_deliveries/{delivery_id}/redeliver");
        for _ in 0..2 {
            let (status, body) = send(&app, Method::POST, &path, None).await;
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["id"], delivery_id.to_string());
            assert_eq!(body["status"], "pending");
            assert_eq!(body["attempts"], 8);
        }
        let listed = deliveries(&app, &endpoint, "?status=pending").await;
        assert_eq!(listed.len(), 1);
        assert!(listed[0]["next_attempt_at"].is_string());

        let messages = delivery_messages(&app).await;
        assert_eq!(messages.len(), 3, "{messages:?}");
        let redeliveries: Vec<&(Option<String>, DeliveryMessage)> = messages
            .iter()
            .filter(|(_, message)| message.redeliver)
            .collect();
        assert_eq!(redeliveries.len(), 2);
        assert!(redeliveries
            .iter()
            .all(|(_, m)| m.delivery_id == delivery_id));
        assert_ne!(redeliveries[0].0, redeliveries[1].0);

        for (path, status) in [
            (
                format!("/webhook_deliveries/{}/redeliver", Uuid::now_v7()),
                404,
            ),
            ("/webhook_deliveries/nope/redeliver".to_string(), 400),
        ] {
            let (got, answer) = send(&app, Method::POST, &path, None).await;
            assert_eq!(got, status, "{path}: {answer}");
        }
    }
}

mod alerts {
    use super::*;

    async fn put(app: &TestApp, body: Value) -> (u16, Value) {
        send(app, Method::PUT, "/credits/alerts", Some(body)).await
    }

    async fn effective(app: &TestApp, query: &str) -> Value {
        let (status, body) = send(app, Method::GET, &format!("/credits/alerts{query}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    #[tokio::test]
    async fn a_users_own_list_overrides_the_apps_default_until_dropped() {
        let app = spawn().await;
        assert_eq!(
            effective(&app, "?user_id=u1").await,
            json!({ "user_id": "u1", "credit_type": "credits", "thresholds": [], "source": "none" })
        );

        let (status, set) = put(&app, json!({ "thresholds": [100, 1000, 100] })).await;
        assert_eq!(status, 200, "{set}");
        assert_eq!(
            set,
            json!({ "user_id": null, "credit_type": "credits", "thresholds": [1000, 100] })
        );
        let app_default = effective(&app, "?user_id=u1").await;
        assert_eq!(app_default["source"], "app");
        assert_eq!(app_default["thresholds"], json!([1000, 100]));
        assert_eq!(effective(&app, "").await["source"], "app");

        let (status, own) = put(&app, json!({ "user_id": "u1", "thresholds": [] })).await;
        assert_eq!(status, 200, "{own}");
        assert_eq!(own["user_id"], "u1");
        let none_for_u1 = effective(&app, "?user_id=u1").await;
        assert_eq!(none_for_u1["source"], "user");
        assert_eq!(none_for_u1["thresholds"], json!([]));
        assert_eq!(effective(&app, "?user_id=u2").await["source"], "app");

        let (status, _) = send(&app, Method::DELETE, "/credits/alerts?user_id=u1", None).await;
        assert_eq!(status, 204);
        assert_eq!(effective(&app, "?user_id=u1").await["source"], "app");
        let (status, _) = send(&app, Method::DELETE, "/credits/alerts", None).await;
        assert_eq!(status, 204);
        assert_eq!(effective(&app, "?user_id=u1").await["source"], "none");
    }

    #[tokio::test]
    async fn alerts_are_per_credit_type() {
        let app = spawn().await;
        let (status, set) = put(
            &app,
            json!({ "user_id": "u1", "credit_type": "image", "thresholds": [5] }),
        )
        .await;
        assert_eq!(status, 200, "{set}");
        assert_eq!(set["credit_type"], "image");
        let image = effective(&app, "?user_id=u1&credit_type=image").await;
        assert_eq!(image["thresholds"], json!([5]));
        assert_eq!(image["source"], "user");
        assert_eq!(effective(&app, "?user_id=u1").await["source"], "none");
    }

    #[tokio::test]
    async fn bad_alerts_are_400_naming_the_field_and_write_nothing() {
        let app = spawn().await;
        let eleven: Vec<i64> = (1..=11).collect();
        for (body, field) in [
            (json!({}), "thresholds"),
            (json!({ "thresholds": eleven }), "thresholds"),
            (json!({ "thresholds": [0] }), "thresholds"),
            (
                json!({ "thresholds": [1_000_000_000_001i64] }),
                "thresholds",
            ),
            (json!({ "thresholds": [-5] }), "thresholds"),
            (json!({ "thresholds": [1.5] }), "thresholds"),
            (json!({ "thresholds": "100" }), "thresholds"),
            (json!({ "thresholds": [1], "user_id": "" }), "user_id"),
            (json!({ "thresholds": [1], "user_id": 7 }), "user_id"),
            (
                json!({ "thresholds": [1], "credit_type": "Not A Type" }),
                "credit_type",
            ),
            (json!({ "thresholds": [1], "threshold": 1 }), "threshold"),
        ] {
            let (status, answer) = put(&app, body.clone()).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
        assert_eq!(count(&app, "balance_alerts").await, 0);
        assert_eq!(config_version(&app).await, None);
        let (status, max) = put(
            &app,
            json!({ "thresholds": [1_000_000_000_000i64, 1, 2, 3, 4, 5, 6, 7, 8, 9] }),
        )
        .await;
        assert_eq!(status, 200, "{max}");
        for query in ["?user_id=", "?credit_type=Bad!"] {
            for method in [Method::GET, Method::DELETE] {
                let (status, answer) = send(
                    &app,
                    method.clone(),
                    &format!("/credits/alerts{query}"),
                    None,
                )
                .await;
                assert_eq!(status, 400, "{method} {query}: {answer}");
            }
        }
    }
}

mod isolation {
    use super::*;

    #[tokio::test]
    async fn another_apps_endpoints_deliveries_events_and_alerts_are_out_of_reach() {
        let app = spawn().await;
        let endpoint = endpoint_id(&app, "mine").await;
        let event_id = ping(&app, &endpoint).await;
        let delivery_id = deliveries(&app, &endpoint, "").await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        send(
            &app,
            Method::PUT,
            "/credits/alerts",
            Some(json!({ "thresholds": [10] })),
        )
        .await;
        let (_, other_key) = create_app(&app.pool, "other").await;

        let path = format!("/webhook_endpoints/{endpoint}");
        for (method, path, body) in [
            (Method::GET, path.clone(), None),
            (
                Method::PATCH,
                path.clone(),
                Some(json!({ "enabled": false })),
            ),
            (Method::DELETE, path.clone(), None),
            (Method::POST, format!("{path}/rotate_secret"), None),
            (Method::POST, format!("{path}/test"), None),
            (Method::GET, format!("{path}/deliveries"), None),
            (Method::GET, format!("/events/{event_id}"), None),
            (
                Method::POST,
                format!("/webhook_deliveries/{delivery_id}/redeliver"),
                None,
            ),
        ] {
            let (status, answer) = app.send_as(&other_key, method.clone(), &path, body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
        let (_, listed) = app
            .send_as(&other_key, Method::GET, "/webhook_endpoints", None)
            .await;
        assert_eq!(listed["endpoints"], json!([]));
        let (_, events) = app.send_as(&other_key, Method::GET, "/events", None).await;
        assert_eq!(events["events"], json!([]));
        let (_, alerts) = app
            .send_as(&other_key, Method::GET, "/credits/alerts", None)
            .await;
        assert_eq!(alerts["source"], "none");

        let (_, mine) = send(&app, Method::GET, &path, None).await;
        assert_eq!(mine["enabled"], true, "untouched by the other app");
        assert_eq!(
            deliveries(&app, &endpoint, "").await[0]["status"],
            "pending"
        );
    }
}

mod recorded {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::harness::free_local_addr;

    /// The app's events of `user_id` once there are `count` of them, newest first.
    async fn user_events(app: &TestApp, user_id: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, page) = send(
                app,
                Method::GET,
                &format!("/events?user_id={user_id}"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            if events.len() >= count {
                return events;
            }
            assert!(Instant::now() < deadline, "only {events:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn what_the_workers_record_for_the_apis_endpoints_and_alerts_reads_back() {
        // The worker delivers what it records: to a loopback port nothing listens on, so no
        // attempt leaves this machine.
        let app = spawn_app_with(Options {
            webhook_allow_private: true,
            ..Options::default()
        })
        .await;
        let url = format!("http://{}/recorded", free_local_addr());
        let endpoint = create_endpoint(
            &app,
            json!({ "url": url, "events": ["credits.added", "balance.low"] }),
        )
        .await;
        let (status, _) = send(
            &app,
            Method::PUT,
            "/credits/alerts",
            Some(json!({ "thresholds": [100] })),
        )
        .await;
        assert_eq!(status, 200);
        // Workers reload an app's configuration within a second of its version changing.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let added = app.add("u1", 150).await;
        let (status, body) = app.deduct("u1", 100).await;
        assert_eq!(status, 200, "{body}");
        let events = user_events(&app, "u1", 2).await;
        assert_eq!(events[1]["type"], "credits.added");
        assert_eq!(events[1]["user_id"], "u1");
        assert_eq!(events[1]["sequence"], 1);
        assert_eq!(events[1]["data"]["ledger_id"], added["ledger_id"]);
        assert_eq!(events[1]["data"]["amount"], 150);
        assert_eq!(events[0]["type"], "balance.low");
        assert_eq!(events[0]["data"]["threshold"], 100);
        assert_eq!(events[0]["data"]["available"], 50);
        let (_, low) = send(&app, Method::GET, "/events?type=balance.low", None).await;
        assert_eq!(low["events"], json!([events[0]]));

        let endpoint = endpoint["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed = deliveries(&app, endpoint, "").await;
            let mut delivered: Vec<&Value> = listed.iter().map(|d| &d["event_id"]).collect();
            delivered.sort_by_key(|id| id.to_string());
            let mut recorded: Vec<&Value> = events.iter().map(|e| &e["id"]).collect();
            recorded.sort_by_key(|id| id.to_string());
            if delivered == recorded {
                break;
            }
            assert!(Instant::now() < deadline, "deliveries {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
