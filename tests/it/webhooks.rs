//! Payment webhooks through the real path: signature → JetStream → worker → Postgres.
//! Events are signed here exactly as Stripe's and Polar's libraries sign them (HMAC-SHA256 over
//! `"{t}.{body}"`, and over `"{id}.{timestamp}.{body}"` for Standard Webhooks); the fixed
//! vectors produced by the official libraries are checked in the ingress's unit tests.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{spawn_app, TestApp};

const STRIPE_SECRET: &str = "whsec_test_secret_one";

fn hmac(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn stripe_header(secrets: &[&str], t: i64, body: &str) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(&format!(
            ",v1={}",
            hex::encode(hmac(secret.as_bytes(), &format!("{t}.{body}")))
        ));
    }
    header
}

async fn post_stripe(app: &TestApp, body: &str, signature: &str) -> (u16, Value) {
    app.post_raw(
        &format!("/webhooks/stripe/{}", app.app_id),
        body,
        &[
            ("content-type", "application/json"),
            ("stripe-signature", signature),
        ],
    )
    .await
}

async fn send_stripe(app: &TestApp, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    post_stripe(app, &body, &stripe_header(&[STRIPE_SECRET], now(), &body)).await
}

fn payment_intent(event_id: &str, intent: &str, user: &str, credits: &str) -> Value {
    json!({ "id": event_id, "object": "event", "type": "payment_intent.succeeded",
            "data": { "object": { "id": intent, "object": "payment_intent", "amount": 1000, "amount_received": 1000,
                                  "currency": "usd", "metadata": { "tally_user_id": user, "tally_credits": credits } } } })
}

fn charge_refunded(event_id: &str, intent: &str, refunded_total: i64) -> Value {
    json!({ "id": event_id, "type": "charge.refunded",
            "data": { "object": { "id": "ch_1", "payment_intent": intent, "amount": 1000, "amount_refunded": refunded_total, "metadata": {} } } })
}

#[tokio::test]
async fn a_stripe_payment_credits_its_user_once_however_often_it_is_delivered() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let event = payment_intent("evt_1", "pi_1", "user_1", "500");
    for _ in 0..3 {
        let (status, body) = send_stripe(&app, &event).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["received"], true);
    }
    let concurrent = (0..5).map(|_| send_stripe(&app, &event));
    for (status, _) in futures::future::join_all(concurrent).await {
        assert_eq!(status, 200);
    }
    let record = app.webhook_event("evt_1").await;
    assert_eq!(record["outcome"], "credited");
    assert_eq!(record["provider"], "stripe");
    assert_eq!(record["type"], "payment_intent.succeeded");
    assert_eq!(record["user_id"], "user_1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance("user_1").await, 500);
    let (_, history) = app.get("/credits/history?user_id=user_1").await;
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["type"], "payment");
    assert_eq!(entries[0]["source"], "stripe");
    assert_eq!(entries[0]["ledger_id"], record["ledger_id"]);
    app.assert_verified().await;
}

#[tokio::test]
async fn both_stripe_events_of_one_payment_credit_once() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let session = json!({ "id": "evt_cs", "type": "checkout.session.completed",
        "data": { "object": { "id": "cs_1", "payment_intent": "pi_9", "payment_status": "paid", "amount_total": 1000,
                              "metadata": { "tally_user_id": "user_9", "tally_credits": "300" } } } });
    assert_eq!(send_stripe(&app, &session).await.0, 200);
    assert_eq!(
        send_stripe(&app, &payment_intent("evt_pi", "pi_9", "user_9", "300"))
            .await
            .0,
        200
    );
    assert_eq!(app.webhook_event("evt_cs").await["outcome"], "credited");
    let second = app.webhook_event("evt_pi").await;
    assert_eq!(second["outcome"], "duplicate");
    assert_eq!(app.balance("user_9").await, 300);
}

#[tokio::test]
async fn forged_stale_and_unsigned_stripe_events_are_refused_and_credit_nothing() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let body = payment_intent("evt_x", "pi_x", "user_x", "999").to_string();
    let tampered = body.replace("999", "9999");
    let cases = [
        (
            "tampered body",
            tampered.clone(),
            stripe_header(&[STRIPE_SECRET], now(), &body),
        ),
        (
            "wrong secret",
            body.clone(),
            stripe_header(&["whsec_wrong"], now(), &body),
        ),
        (
            "stale timestamp",
            body.clone(),
            stripe_header(&[STRIPE_SECRET], now() - 301, &body),
        ),
        ("garbage header", body.clone(), "nonsense".to_string()),
    ];
    for (name, payload, header) in cases {
        let (status, answer) = post_stripe(&app, &payload, &header).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"], "invalid_signature", "{name}");
    }
    let (status, _) = app
        .post_raw(
            &format!("/webhooks/stripe/{}", app.app_id),
            &body,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 400, "missing header");
    let not_json = "not json";
    let (status, answer) = post_stripe(
        &app,
        not_json,
        &stripe_header(&[STRIPE_SECRET], now(), not_json),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_signature"))
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.balance("user_x").await, 0);
    let received: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_commands")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(received, 0, "nothing was published");
    let metrics = app.get_text(&app.url("/metrics")).await;
    assert!(
        metrics.contains("tally_webhooks_rejected_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rotated_stripe_secrets_the_two_newest_are_accepted() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", "whsec_oldest").await;
    app.set_webhook_secret("stripe", "whsec_old").await;
    app.set_webhook_secret("stripe", "whsec_new").await;
    let body = payment_intent("evt_r1", "pi_r1", "user_r", "10").to_string();
    // Stripe signs with both secrets during a rotation.
    let (status, _) = post_stripe(
        &app,
        &body,
        &stripe_header(&["whsec_old", "whsec_new"], now(), &body),
    )
    .await;
    assert_eq!(status, 200);
    let body = payment_intent("evt_r2", "pi_r2", "user_r", "10").to_string();
    let (status, _) = post_stripe(&app, &body, &stripe_header(&["whsec_old"], now(), &body)).await;
    assert_eq!(status, 200);
    let body = payment_intent("evt_r3", "pi_r3", "user_r", "10").to_string();
    let (status, _) =
        post_stripe(&app, &body, &stripe_header(&["whsec_oldest"], now(), &body)).await;
    assert_eq!(
        status, 400,
        "a secret two rotations old is no longer accepted"
    );
    app.webhook_event("evt_r2").await;
    assert_eq!(app.balance("user_r").await, 20);
}

#[tokio::test]
async fn invalid_metadata_is_recorded_as_rejected_and_credits_nothing() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    for (event_id, credits) in [("evt_abc", "abc"), ("evt_neg", "-5"), ("evt_zero", "0")] {
        let (status, _) = send_stripe(
            &app,
            &payment_intent(event_id, &format!("pi_{event_id}"), "user_m", credits),
        )
        .await;
        assert_eq!(status, 200, "never a 5xx or 4xx for bad metadata");
        let record = app.webhook_event(event_id).await;
        assert_eq!(record["outcome"], "rejected");
        assert!(
            record["reason"].as_str().unwrap().contains("tally_credits"),
            "{record}"
        );
    }
    let no_user = json!({ "id": "evt_nouser", "type": "payment_intent.succeeded",
        "data": { "object": { "id": "pi_nouser", "amount": 1000, "metadata": { "tally_credits": "5" } } } });
    send_stripe(&app, &no_user).await;
    assert_eq!(app.webhook_event("evt_nouser").await["outcome"], "rejected");
    let other = json!({ "id": "evt_other", "type": "customer.created", "data": { "object": { "id": "cus_1" } } });
    send_stripe(&app, &other).await;
    assert_eq!(app.webhook_event("evt_other").await["outcome"], "ignored");
    assert_eq!(app.balance("user_m").await, 0);
    assert_eq!(app.ledger_rows().await, 0);
}

#[tokio::test]
async fn partial_refunds_then_a_full_refund_claw_back_in_proportion() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    send_stripe(&app, &payment_intent("evt_p", "pi_p", "user_p", "500")).await;
    app.webhook_event("evt_p").await;
    // amount_refunded is cumulative: 300, then 600, then 1000 of 1000.
    for (event_id, total, balance) in [
        ("evt_f1", 300, 350),
        ("evt_f2", 600, 200),
        ("evt_f2_retry", 600, 200),
        ("evt_f3", 1000, 0),
    ] {
        assert_eq!(
            send_stripe(&app, &charge_refunded(event_id, "pi_p", total))
                .await
                .0,
            200
        );
        app.webhook_event(event_id).await;
        assert_eq!(app.balance("user_p").await, balance, "after {event_id}");
    }
    let (_, history) = app.get("/credits/history?user_id=user_p").await;
    let clawbacks: Vec<&Value> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "clawback")
        .collect();
    assert_eq!(clawbacks.len(), 3);
    assert!(clawbacks
        .iter()
        .all(|e| e["refunded_ledger_id"].is_string()));
    assert_eq!(
        app.webhook_event("evt_f2_retry").await["outcome"],
        "duplicate"
    );
    assert_eq!(app.webhook_event("evt_f3").await["outcome"], "clawed_back");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_dispute_after_spending_clamps_at_zero_and_records_the_rest() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    send_stripe(&app, &payment_intent("evt_d0", "pi_d", "user_d", "500")).await;
    app.webhook_event("evt_d0").await;
    let (status, _) = app.deduct("user_d", 450).await;
    assert_eq!(status, 200);
    let dispute = json!({ "id": "evt_dispute", "type": "charge.dispute.created",
        "data": { "object": { "id": "dp_1", "charge": "ch_1", "payment_intent": "pi_d", "amount": 1000 } } });
    send_stripe(&app, &dispute).await;
    assert_eq!(
        app.webhook_event("evt_dispute").await["outcome"],
        "clawed_back"
    );
    assert_eq!(app.balance("user_d").await, 0);
    let (_, history) = app.get("/credits/history?user_id=user_d&limit=1").await;
    let entry = &history["entries"][0];
    assert_eq!(entry["type"], "clawback");
    assert_eq!(entry["amount"], -50);
    assert_eq!(entry["metadata"]["unrecovered"], "450");
    app.assert_verified().await;
}

fn polar_headers(key: &[u8], id: &str, t: i64, body: &str) -> String {
    let signature =
        base64::engine::general_purpose::STANDARD.encode(hmac(key, &format!("{id}.{t}.{body}")));
    format!("v1,{signature}")
}

async fn post_polar(app: &TestApp, key: &[u8], id: &str, body: &str) -> (u16, Value) {
    let t = now();
    let signature = polar_headers(key, id, t, body);
    app.post_raw(
        &format!("/webhooks/polar/{}", app.app_id),
        body,
        &[
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", &t.to_string()),
            ("webhook-signature", &signature),
        ],
    )
    .await
}

fn order(event_type: &str, order_id: &str, user: &str, extra: Value) -> String {
    let mut data = json!({ "id": order_id, "total_amount": 1000, "currency": "usd",
                           "metadata": { "tally_user_id": user, "tally_credits": 400 } });
    data.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "type": event_type, "timestamp": "2026-11-25T12:00:00Z", "data": data }).to_string()
}

#[tokio::test]
async fn polar_orders_credit_with_raw_and_base64_secrets_and_refunds_claw_back() {
    let app = spawn_app().await;
    let raw = "polar_whs_raw_secret_value";
    app.set_webhook_secret("polar", raw).await;
    let (status, body) = post_polar(
        &app,
        raw.as_bytes(),
        "msg_1",
        &order("order.paid", "ord_1", "user_o", json!({})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.webhook_event("msg_1").await["outcome"], "credited");
    assert_eq!(app.balance("user_o").await, 400);

    let key = b"sixteen byte key";
    let standard = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    app.set_webhook_secret("polar", &standard).await;
    let (status, _) = post_polar(
        &app,
        key,
        "msg_2",
        &order("order.paid", "ord_2", "user_o", json!({})),
    )
    .await;
    assert_eq!(status, 200);
    app.webhook_event("msg_2").await;
    assert_eq!(app.balance("user_o").await, 800);

    let (status, _) = post_polar(
        &app,
        b"wrong",
        "msg_3",
        &order("order.paid", "ord_3", "user_o", json!({})),
    )
    .await;
    assert_eq!(status, 400);

    let refund = order(
        "order.refunded",
        "ord_1",
        "user_o",
        json!({ "refunded_amount": 1000 }),
    );
    assert_eq!(post_polar(&app, key, "msg_4", &refund).await.0, 200);
    assert_eq!(app.webhook_event("msg_4").await["outcome"], "clawed_back");
    assert_eq!(app.balance("user_o").await, 400);
    app.assert_verified().await;
}

#[tokio::test]
async fn unknown_app_missing_secret_and_the_single_app_form() {
    let app = spawn_app().await;
    let body = payment_intent("evt_s", "pi_s", "user_s", "7").to_string();
    let header = stripe_header(&[STRIPE_SECRET], now(), &body);
    let headers = [
        ("content-type", "application/json"),
        ("stripe-signature", header.as_str()),
    ];
    let (status, answer) = app
        .post_raw(
            &format!("/webhooks/stripe/{}", uuid::Uuid::now_v7()),
            &body,
            &headers,
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, _) = app
        .post_raw(&format!("/webhooks/stripe/{}", app.app_id), &body, &headers)
        .await;
    assert_eq!(status, 400, "an app with no secret for the provider");
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let (status, answer) = app.post_raw("/webhooks/stripe", &body, &headers).await;
    assert_eq!(status, 200, "{answer}");
    app.webhook_event("evt_s").await;
    assert_eq!(app.balance("user_s").await, 7);
}

#[tokio::test]
async fn the_event_log_pages_newest_first_and_filters_by_provider() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    app.set_webhook_secret("polar", "polar_whs_x").await;
    for i in 0..5 {
        send_stripe(
            &app,
            &payment_intent(&format!("evt_{i}"), &format!("pi_{i}"), "user_l", "1"),
        )
        .await;
    }
    post_polar(
        &app,
        b"polar_whs_x",
        "msg_l",
        &order("order.paid", "ord_l", "user_l", json!({})),
    )
    .await;
    app.webhook_event("msg_l").await;
    for i in 0..5 {
        app.webhook_event(&format!("evt_{i}")).await;
    }
    let (_, first) = app.get("/webhooks/events?provider=stripe&limit=2").await;
    let mut seen: Vec<String> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_string);
    while let Some(next) = cursor {
        let (status, page) = app
            .get(&format!(
                "/webhooks/events?provider=stripe&limit=2&cursor={next}"
            ))
            .await;
        assert_eq!(status, 200);
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_string()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    seen.sort();
    assert_eq!(seen, vec!["evt_0", "evt_1", "evt_2", "evt_3", "evt_4"]);
    let (_, polar) = app.get("/webhooks/events?provider=polar").await;
    assert_eq!(polar["events"].as_array().unwrap().len(), 1);
    let (status, answer) = app.get("/webhooks/events?provider=paypal").await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("provider")));
    let (status, _) = app.get("/webhooks/events?cursor=bogus").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_payment_with_tally_expires_in_days_grants_expiring_credits() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let mut event = payment_intent("evt_e", "pi_e", "user_e", "500");
    event["data"]["object"]["metadata"]["tally_expires_in_days"] = json!("30");
    assert_eq!(send_stripe(&app, &event).await.0, 200);
    let record = app.webhook_event("evt_e").await;
    assert_eq!(record["outcome"], "credited");
    let (_, balance) = app.get("/credits/balance?user_id=user_e").await;
    assert_eq!(balance["next_expiry"]["amount"], 500);
    let expires_at = chrono::DateTime::parse_from_rfc3339(
        balance["next_expiry"]["expires_at"].as_str().unwrap(),
    )
    .unwrap();
    let days = (expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days} hours");
    let mut bad = payment_intent("evt_e2", "pi_e2", "user_e", "500");
    bad["data"]["object"]["metadata"]["tally_expires_in_days"] = json!("soon");
    send_stripe(&app, &bad).await;
    assert_eq!(app.webhook_event("evt_e2").await["outcome"], "rejected");
}

#[tokio::test]
async fn a_large_provider_event_is_accepted() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let mut event = payment_intent("evt_big", "pi_big", "user_big", "5");
    // Over the API's 64 KiB, as a Checkout Session with many line items can be.
    event["data"]["object"]["description"] = json!("x".repeat(200 * 1024));
    let (status, body) = send_stripe(&app, &event).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.webhook_event("evt_big").await["outcome"], "credited");
}

#[tokio::test]
async fn a_payment_credits_the_credit_type_its_metadata_names_and_a_refund_claws_it_back() {
    let app = spawn_app().await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let mut event = payment_intent("evt_typed", "pi_typed", "user_1", "500");
    event["data"]["object"]["metadata"]["tally_credit_type"] = json!("image");
    let (status, body) = send_stripe(&app, &event).await;
    assert_eq!(status, 200, "{body}");
    let credited = app.webhook_event("evt_typed").await;
    assert_eq!(credited["outcome"], "credited", "{credited}");
    let (_, image) = app
        .get("/credits/balance?user_id=user_1&credit_type=image")
        .await;
    assert_eq!(image["balance"], 500);
    assert_eq!(
        app.balance("user_1").await,
        0,
        "the default type is untouched"
    );

    let (status, _) =
        send_stripe(&app, &charge_refunded("evt_typed_refund", "pi_typed", 400)).await;
    assert_eq!(status, 200);
    app.webhook_event("evt_typed_refund").await;
    let (_, image) = app
        .get("/credits/balance?user_id=user_1&credit_type=image")
        .await;
    assert_eq!(
        image["balance"], 300,
        "40% of the payment is clawed back from its type"
    );

    let mut bad = payment_intent("evt_bad_type", "pi_bad_type", "user_1", "5");
    bad["data"]["object"]["metadata"]["tally_credit_type"] = json!("Not A Type");
    send_stripe(&app, &bad).await;
    let rejected = app.webhook_event("evt_bad_type").await;
    assert_eq!(rejected["outcome"], "rejected", "{rejected}");
    assert!(rejected["reason"]
        .as_str()
        .unwrap()
        .contains("tally_credit_type"));
    app.assert_verified().await;
}
