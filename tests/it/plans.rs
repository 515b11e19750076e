//! Plans through the real path: the product catalogue, subscription invoices and Polar orders
//! priced by it, and auto top-up charges made through a stand-in for Stripe's API
//! (`stripe_standin`), whose webhooks come back signed as Stripe signs them.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{spawn_app_with, Options, TestApp, ADMIN_TOKEN};
use crate::stripe_standin::{Behavior, StripeStandIn};

const STRIPE_SECRET: &str = "whsec_plans_test_secret";
const POLAR_SECRET: &str = "polar_plans_test_secret";
const STRIPE_KEY: &str = "sk_test_51PlansStandInKey0123456789";
const SECRET_KEY: &str = "tally-test-secret-key-0123456789abcdef";

fn fixture(name: &str) -> Value {
    let path = format!("{}/it/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

fn hmac(key: &[u8], message: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Sends `event` to the Stripe webhook, signed as Stripe signs it.
async fn send_stripe(app: &TestApp, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let t = chrono::Utc::now().timestamp();
    let signature = hex::encode(hmac(STRIPE_SECRET.as_bytes(), &format!("{t}.{body}")));
    app.post_raw(
        &format!("/webhooks/stripe/{}", app.app_id),
        &body,
        &[
            ("content-type", "application/json"),
            ("stripe-signature", &format!("t={t},v1={signature}")),
        ],
    )
    .await
}

/// Sends `event` to the Polar webhook under `id`, signed as Standard Webhooks sign it.
async fn send_polar(app: &TestApp, id: &str, event: &Value) -> (u16, Value) {
    use base64::Engine;
    let body = event.to_string();
    let t = chrono::Utc::now().timestamp();
    let signature = base64::engine::general_purpose::STANDARD
        .encode(hmac(POLAR_SECRET.as_bytes(), &format!("{id}.{t}.{body}")));
    app.post_raw(
        &format!("/webhooks/polar/{}", app.app_id),
        &body,
        &[
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", &t.to_string()),
            ("webhook-signature", &format!("v1,{signature}")),
        ],
    )
    .await
}

async fn put_product(app: &TestApp, provider: &str, id: &str, body: Value) -> Value {
    let (status, product) = app
        .send(
            Method::PUT,
            &format!("/products/{provider}/{id}"),
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{product}");
    product
}

async fn balance(app: &TestApp, user: &str) -> Value {
    let (status, balance) = app.get(&format!("/credits/balance?user_id={user}")).await;
    assert_eq!(status, 200, "{balance}");
    balance
}

#[tokio::test]
async fn the_catalogue_is_kept_per_app_and_checked_field_by_field() {
    let app = spawn_app_with(Options::default()).await;
    let pack = put_product(
        &app,
        "stripe",
        "price_pack_500",
        json!({ "credits": 500, "mode": "one_time", "expires_in_days": 90 }),
    )
    .await;
    assert_eq!(pack["provider"], "stripe");
    assert_eq!(pack["credit_type"], "credits");
    assert_eq!(pack["expires_in_days"], 90);
    let plan = put_product(
        &app,
        "polar",
        "2f6e8a1c-3b4d-4e5f-9a6b-7c8d9e0f1a2b",
        json!({ "credits": 1000, "credit_type": "chat", "mode": "subscription" }),
    )
    .await;
    assert_eq!(plan["expires_in_days"], Value::Null);
    // A second PUT replaces the product.
    let pack = put_product(
        &app,
        "stripe",
        "price_pack_500",
        json!({ "credits": 600, "mode": "one_time" }),
    )
    .await;
    assert_eq!(pack["credits"], 600);
    assert_eq!(pack["expires_in_days"], Value::Null);
    let (status, listed) = app.send(Method::GET, "/products", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = listed["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["2f6e8a1c-3b4d-4e5f-9a6b-7c8d9e0f1a2b", "price_pack_500"]
    );

    for (path, body, field) in [
        (
            "/products/stripe/price_x",
            json!({ "credits": 5, "mode": "subscription", "expires_in_days": 30 }),
            "expires_in_days",
        ),
        (
            "/products/stripe/price_x",
            json!({ "credits": 0, "mode": "one_time" }),
            "credits",
        ),
        (
            "/products/stripe/price_x",
            json!({ "credits": 5, "mode": "yearly" }),
            "mode",
        ),
        (
            "/products/paddle/price_x",
            json!({ "credits": 5, "mode": "one_time" }),
            "provider",
        ),
    ] {
        let (status, error) = app.send(Method::PUT, path, Some(body)).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["field"], field, "{error}");
    }
    let (status, _) = app
        .send(Method::DELETE, "/products/stripe/price_pack_500", None)
        .await;
    assert_eq!(status, 204);
    let (status, error) = app
        .send(Method::DELETE, "/products/stripe/price_pack_500", None)
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"], "not_found");
}

#[tokio::test]
async fn a_subscription_invoice_credits_its_allowance_once_expiring_at_the_period_end() {
    let app = spawn_app_with(Options::default()).await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    put_product(
        &app,
        "stripe",
        "price_pro_monthly",
        json!({ "credits": 1000, "mode": "subscription" }),
    )
    .await;

    // The current shape: the subscription's metadata under `parent.subscription_details`, the
    // line's price under `pricing.price_details`.
    let mut invoice = fixture("stripe_invoice_paid.json");
    invoice["data"]["object"]["lines"]["data"][0]["quantity"] = json!(2);
    let (status, body) = send_stripe(&app, &invoice).await;
    assert_eq!(status, 200, "{body}");
    let record = app.webhook_event(invoice["id"].as_str().unwrap()).await;
    assert_eq!(record["outcome"], "credited", "{record}");
    assert_eq!(record["user_id"], "user_42");
    let user = balance(&app, "user_42").await;
    assert_eq!(user["balance"], 2000, "{user}");
    let period_end = invoice["data"]["object"]["lines"]["data"][0]["period"]["end"]
        .as_i64()
        .unwrap();
    let expires_at = chrono::DateTime::parse_from_rfc3339(
        user["next_expiry"]["expires_at"].as_str().expect("a lot"),
    )
    .unwrap();
    assert_eq!(expires_at.timestamp(), period_end, "{user}");
    assert_eq!(user["next_expiry"]["amount"], 2000);

    // Stripe retries the event, and sends the same invoice again under another event id:
    // each line is credited once.
    send_stripe(&app, &invoice).await;
    let mut again = invoice.clone();
    again["id"] = json!("evt_invoice_again");
    send_stripe(&app, &again).await;
    let record = app.webhook_event("evt_invoice_again").await;
    assert_eq!(record["outcome"], "duplicate", "{record}");
    assert_eq!(balance(&app, "user_42").await["balance"], 2000);

    // An invoice whose lines are no subscription product of the catalogue credits nothing.
    let mut other = fixture("stripe_invoice_paid.json");
    other["id"] = json!("evt_other_price");
    other["data"]["object"]["id"] = json!("in_other");
    other["data"]["object"]["lines"]["data"][0]["pricing"]["price_details"]["price"] =
        json!("price_unknown");
    send_stripe(&app, &other).await;
    assert_eq!(
        app.webhook_event("evt_other_price").await["outcome"],
        "ignored"
    );
    app.assert_verified().await;
}

#[tokio::test]
async fn an_older_invoice_shape_credits_too_and_its_refund_claws_back() {
    let app = spawn_app_with(Options::default()).await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    put_product(
        &app,
        "stripe",
        "price_pro_monthly",
        json!({ "credits": 1000, "credit_type": "chat", "mode": "subscription" }),
    )
    .await;
    // `subscription_details` at the top, the price as an object, the payment intent on the
    // invoice.
    let invoice = fixture("stripe_invoice_paid_legacy.json");
    send_stripe(&app, &invoice).await;
    let record = app.webhook_event(invoice["id"].as_str().unwrap()).await;
    assert_eq!(record["outcome"], "credited", "{record}");
    let (_, chat) = app
        .get("/credits/balance?user_id=user_42&credit_type=chat")
        .await;
    assert_eq!(chat["balance"], 1000, "{chat}");

    // Half of the invoice's payment refunded: half of the allowance taken back.
    let object = &invoice["data"]["object"];
    let refund = json!({ "id": "evt_refund_half", "type": "charge.refunded",
        "data": { "object": { "id": "ch_1", "object": "charge",
            "payment_intent": object["payment_intent"], "amount": object["amount_paid"],
            "amount_refunded": object["amount_paid"].as_i64().unwrap() / 2 } } });
    send_stripe(&app, &refund).await;
    let record = app.webhook_event("evt_refund_half").await;
    assert_eq!(record["outcome"], "clawed_back", "{record}");
    let (_, chat) = app
        .get("/credits/balance?user_id=user_42&credit_type=chat")
        .await;
    assert_eq!(chat["balance"], 500, "{chat}");
    app.assert_verified().await;
}

#[tokio::test]
async fn polar_orders_of_catalogue_products_credit_the_customer() {
    let app = spawn_app_with(Options::default()).await;
    app.set_webhook_secret("polar", POLAR_SECRET).await;
    let subscription = fixture("polar_order_paid_subscription.json");
    let one_time = fixture("polar_order_paid_one_time.json");
    put_product(
        &app,
        "polar",
        subscription["data"]["product_id"].as_str().unwrap(),
        json!({ "credits": 300, "mode": "subscription" }),
    )
    .await;
    put_product(
        &app,
        "polar",
        one_time["data"]["product_id"].as_str().unwrap(),
        json!({ "credits": 50, "mode": "one_time", "expires_in_days": 30 }),
    )
    .await;

    // No metadata: the customer's external id is the user; the allowance expires at the
    // subscription's period end.
    send_polar(&app, "msg_sub_1", &subscription).await;
    let record = app.webhook_event("msg_sub_1").await;
    assert_eq!(record["outcome"], "credited", "{record}");
    let user = balance(&app, "user_42").await;
    assert_eq!(user["balance"], 300, "{user}");
    let period_end = chrono::DateTime::parse_from_rfc3339(
        subscription["data"]["subscription"]["current_period_end"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(user["next_expiry"]["expires_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(expires_at, period_end);

    // The metadata's user wins over the customer; the pack expires after the product's days.
    send_polar(&app, "msg_pack_1", &one_time).await;
    send_polar(&app, "msg_pack_1", &one_time).await;
    assert_eq!(app.webhook_event("msg_pack_1").await["user_id"], "user_7");
    let user = balance(&app, "user_7").await;
    assert_eq!(user["balance"], 50, "{user}");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(user["next_expiry"]["expires_at"].as_str().unwrap())
            .unwrap();
    let days = (expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days} hours");
    assert_eq!(balance(&app, "user_42").await["balance"], 300);
    app.assert_verified().await;
}

/// A deployment whose workers charge through `stripe`, with the app's Stripe key set and an
/// endpoint subscribed to every event (so that events are recorded).
async fn topup_app(stripe: &StripeStandIn, workers: usize) -> TestApp {
    let app = spawn_app_with(Options {
        workers,
        webhook_allow_private: true,
        stripe_api_base: Some(stripe.base_url()),
        secret_key: Some(SECRET_KEY.into()),
        worker: |config| config.auto_topup_retry_secs = 2,
        ..Options::default()
    })
    .await;
    app.set_webhook_secret("stripe", STRIPE_SECRET).await;
    let response = app
        .http
        .put(app.url(&format!("/admin/apps/{}/stripe_key", app.app_id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "secret_key": STRIPE_KEY }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let (status, endpoint) = app
        .send(
            Method::POST,
            "/webhook_endpoints",
            Some(json!({ "url": "http://127.0.0.1:9/events" })),
        )
        .await;
    assert_eq!(status, 201, "{endpoint}");
    app
}

async fn set_auto_topup(app: &TestApp, user: &str, threshold: i64) -> Value {
    let (status, settings) = app.send(Method::PUT,
        "/credits/auto_topup",
        Some(json!({ "user_id": user, "enabled": true, "threshold": threshold,
                     "credits": 1000, "amount": 999, "currency": "usd",
                     "stripe_customer_id": "cus_test_1", "stripe_payment_method_id": "pm_card_visa" })),
    )
    .await;
    assert_eq!(status, 200, "{settings}");
    // Workers reload an app's thresholds every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settings
}

async fn auto_topup(app: &TestApp, user: &str) -> Value {
    let (status, settings) = app
        .send(
            Method::GET,
            &format!("/credits/auto_topup?user_id={user}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{settings}");
    settings
}

/// Waits until the user's last attempt is `status` (and has a payment intent, if pending).
async fn wait_attempt(app: &TestApp, user: &str, status: &str) -> Value {
    wait_next_attempt(app, user, status, &Value::Null).await
}

/// [`wait_attempt`] for an attempt other than `previous` (settings read earlier): the one the
/// last change made, not the one before it that ended in the same status.
async fn wait_next_attempt(app: &TestApp, user: &str, status: &str, previous: &Value) -> Value {
    let previous = &previous["last_attempt"]["id"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let settings = auto_topup(app, user).await;
        let attempt = &settings["last_attempt"];
        let charged = status != "pending" || attempt["payment_intent_id"].is_string();
        let new = previous.is_null() || attempt["id"] != *previous;
        if attempt["status"] == status && charged && new {
            return settings;
        }
        assert!(
            Instant::now() < deadline,
            "the attempt never became {status}: {settings}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app's recorded events of `event_type`.
async fn events(app: &TestApp, event_type: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/events?type={event_type}")).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_charge_per_crossing_under_concurrent_deducts_and_the_credit_arrives_by_webhook() {
    let stripe = StripeStandIn::start(STRIPE_KEY).await;
    let app = topup_app(&stripe, 2).await;
    app.add("payer", 1000).await;
    let settings = set_auto_topup(&app, "payer", 500).await;
    assert_eq!(settings["consecutive_failures"], 0);
    assert_eq!(settings["last_attempt"], Value::Null);
    assert_eq!(settings["max_per_month"], 10);

    // 50 concurrent deducts of 20 take `available` from 1,000 to 0, crossing 500 once.
    let deducts = (0..50).map(|_| app.deduct("payer", 20));
    for (status, body) in futures::future::join_all(deducts).await {
        assert_eq!(status, 200, "{body}");
    }
    let settings = wait_attempt(&app, "payer", "pending").await;
    let attempt_id = settings["last_attempt"]["id"].as_str().unwrap().to_string();
    let intents = stripe.payment_intents();
    assert_eq!(intents.len(), 1, "{intents:?}");
    let request = &stripe.requests()[0];
    assert_eq!(
        request.idempotency_key.as_deref(),
        Some(attempt_id.as_str())
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );
    for (field, value) in [
        ("amount", "999"),
        ("currency", "usd"),
        ("customer", "cus_test_1"),
        ("payment_method", "pm_card_visa"),
        ("off_session", "true"),
        ("confirm", "true"),
        ("metadata[tally_user_id]", "payer"),
        ("metadata[tally_credits]", "1000"),
        ("metadata[tally_credit_type]", "credits"),
        ("metadata[tally_auto_topup_id]", attempt_id.as_str()),
    ] {
        assert_eq!(
            request.form.get(field).map(String::as_str),
            Some(value),
            "{field}"
        );
    }
    // Charged, but no credit before Stripe's webhook; and no second attempt while one is
    // pending, however many changes leave the balance below the threshold.
    assert_eq!(app.balance("payer").await, 0);
    app.add("payer", 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stripe.payment_intents().len(), 1);

    // Stripe's webhook credits the top-up, once however often it is delivered.
    let event = stripe.event(&intents[0], "payment_intent.succeeded");
    for _ in 0..2 {
        let (status, body) = send_stripe(&app, &event).await;
        assert_eq!(status, 200, "{body}");
    }
    let record = app.webhook_event(event["id"].as_str().unwrap()).await;
    assert_eq!(record["outcome"], "credited", "{record}");
    let settings = wait_attempt(&app, "payer", "succeeded").await;
    assert_eq!(settings["last_attempt"]["error"], Value::Null);
    assert_eq!(app.balance("payer").await, 1010);
    let succeeded = events(&app, "auto_topup.succeeded").await;
    assert_eq!(succeeded.len(), 1, "{succeeded:?}");
    assert_eq!(succeeded[0]["data"]["attempt_id"], attempt_id.as_str());
    assert_eq!(succeeded[0]["data"]["credits"], 1000);
    assert_eq!(stripe.payment_intents().len(), 1);
    app.assert_verified().await;
}

#[tokio::test]
async fn three_declines_in_a_row_disable_auto_topup() {
    let stripe = StripeStandIn::start(STRIPE_KEY).await;
    stripe.set_behavior(Behavior::insufficient_funds());
    let app = topup_app(&stripe, 1).await;
    app.add("payer", 100).await;
    let mut settings = set_auto_topup(&app, "payer", 96).await;
    for round in 1..=3 {
        // Each change that leaves the balance below the threshold with nothing pending makes
        // one attempt.
        app.deduct("payer", 5).await;
        settings = wait_next_attempt(&app, "payer", "failed", &settings).await;
        assert_eq!(settings["consecutive_failures"], round, "{settings}");
        let error = &settings["last_attempt"]["error"];
        assert_eq!(error["code"], "card_declined", "{settings}");
        assert_eq!(error["decline_code"], "insufficient_funds");
        assert_eq!(stripe.requests().len(), round as usize);
    }
    let settings = auto_topup(&app, "payer").await;
    assert_eq!(settings["enabled"], false, "{settings}");
    assert!(settings["disabled_reason"].is_string());
    let failed = events(&app, "auto_topup.failed").await;
    assert_eq!(failed.len(), 3);
    assert_eq!(failed[0]["data"]["decline_code"], "insufficient_funds");
    assert_eq!(events(&app, "auto_topup.disabled").await.len(), 1);

    // Disabled: no more charges. Enabled again: the count starts over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.deduct("payer", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stripe.requests().len(), 3);
    stripe.set_behavior(Behavior::Succeed);
    let settings = set_auto_topup(&app, "payer", 96).await;
    assert_eq!(settings["enabled"], true);
    assert_eq!(settings["consecutive_failures"], 0);
    app.deduct("payer", 5).await;
    wait_attempt(&app, "payer", "pending").await;
    let requests = stripe.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(requests[3].status, 200);
}

#[tokio::test]
async fn action_required_and_a_failed_payment_webhook_settle_the_attempt() {
    let stripe = StripeStandIn::start(STRIPE_KEY).await;
    stripe.set_behavior(Behavior::RequiresAction);
    let app = topup_app(&stripe, 1).await;
    app.add("payer", 100).await;
    set_auto_topup(&app, "payer", 50).await;
    app.deduct("payer", 60).await;
    let settings = wait_attempt(&app, "payer", "action_required").await;
    assert_eq!(settings["consecutive_failures"], 0);
    let required = events(&app, "auto_topup.action_required").await;
    assert_eq!(required.len(), 1, "{required:?}");

    // Charged, then Stripe reports the payment failed.
    stripe.set_behavior(Behavior::Succeed);
    app.deduct("payer", 1).await;
    wait_attempt(&app, "payer", "pending").await;
    let intents = stripe.payment_intents();
    let event = stripe.event(intents.last().unwrap(), "payment_intent.payment_failed");
    send_stripe(&app, &event).await;
    app.webhook_event(event["id"].as_str().unwrap()).await;
    let settings = wait_attempt(&app, "payer", "failed").await;
    assert_eq!(settings["consecutive_failures"], 1, "{settings}");
    assert!(settings["last_attempt"]["error"]["code"].is_string());
    assert_eq!(app.balance("payer").await, 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_during_its_charge_does_not_charge_twice() {
    let stripe = StripeStandIn::start(STRIPE_KEY).await;
    let mut app = topup_app(&stripe, 0).await;
    let mut first = app.spawn_worker_process_with(&[("TALLY_AUTO_TOPUP_RETRY_SECS", "2")]);
    app.add("payer", 100).await;
    set_auto_topup(&app, "payer", 50).await;
    // Stripe takes its time: the worker is killed while its call is in flight, after Stripe
    // made the charge and before the worker heard of it.
    stripe.set_delay(Duration::from_secs(3));
    app.deduct("payer", 60).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stripe.requests().is_empty() {
        assert!(Instant::now() < deadline, "no charge was made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    stripe.set_delay(Duration::ZERO);
    app.start_worker();
    let settings = wait_attempt(&app, "payer", "pending").await;
    let requests = stripe.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key == requests[0].idempotency_key));
    assert!(requests[1..].iter().all(|r| r.replayed), "{requests:?}");
    assert_eq!(stripe.payment_intents().len(), 1);
    assert_eq!(
        settings["last_attempt"]["payment_intent_id"],
        stripe.payment_intents()[0]["id"]
    );
}

#[tokio::test]
async fn attempts_stop_at_the_monthly_cap() {
    let stripe = StripeStandIn::start(STRIPE_KEY).await;
    stripe.set_behavior(Behavior::RequiresAction);
    let app = topup_app(&stripe, 1).await;
    app.add("payer", 100).await;
    let (status, settings) = app
        .send(
            Method::PUT,
            "/credits/auto_topup",
            Some(
                json!({ "user_id": "payer", "enabled": true, "threshold": 96, "credits": 10,
                     "amount": 100, "currency": "eur", "stripe_customer_id": "cus_2",
                     "stripe_payment_method_id": "pm_2", "max_per_month": 2 }),
            ),
        )
        .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["max_per_month"], 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Each attempt ends waiting for the customer, so the next change may make another: two
    // this month, then none.
    let mut settings = settings;
    for _ in 0..2 {
        app.deduct("payer", 5).await;
        settings = wait_next_attempt(&app, "payer", "action_required", &settings).await;
    }
    app.deduct("payer", 5).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stripe.requests().len(), 2);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM auto_topup_attempts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(stripe.requests()[1].form["currency"], "eur");
}
