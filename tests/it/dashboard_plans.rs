//! Plans on the dashboard: the app's page lists its product catalogue and says whether it has a
//! Stripe secret key (never showing it); a user's page shows each auto top-up with its latest
//! charges. Everything written through the API is shown escaped. No worker runs: the pages
//! only read.

use reqwest::header::COOKIE;
use serde_json::{json, Value};

use crate::harness::{spawn_app_with, Options, TestApp, ADMIN_TOKEN};

const STRIPE_KEY: &str = "sk_test_51DashboardPlansKey0123456789";

/// A product id of visible ASCII that is also markup.
const HOSTILE_PRODUCT: &str = r#"price_<b>x</b>&"q""#;
/// The same id as the page must write it.
const HOSTILE_PRODUCT_ESCAPED: &str = "price_&#60;b&#62;x&#60;/b&#62;&#38;&#34;q&#34;";

/// A logged-in dashboard session's client and cookie.
struct Dashboard<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: String,
}

impl<'a> Dashboard<'a> {
    async fn login(app: &'a TestApp) -> Self {
        let (client, cookie) = app.dashboard_session().await;
        Self {
            app,
            client,
            cookie,
        }
    }

    /// The page's HTML, which must answer `200`.
    async fn get(&self, path: &str) -> String {
        let response = self
            .client
            .get(self.app.url(path))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("get");
        let status = response.status().as_u16();
        let html = response.text().await.expect("body");
        assert_eq!(status, 200, "{html}");
        html
    }
}

/// `PUT path` with the app's key.
async fn put(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app
        .http
        .put(app.url(path))
        .bearer_auth(&app.api_key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The part of a page from `start` to the next `end`.
fn between<'h>(html: &'h str, start: &str, end: &str) -> &'h str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {html}"));
    let rest = &html[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[tokio::test]
async fn the_app_page_lists_products_and_whether_a_stripe_key_is_set() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let dashboard = Dashboard::login(&app).await;
    let app_page = format!("/dashboard/apps/{}", app.app_id);

    // Nothing yet: the empty catalogue says how to add a product; no key is set.
    let html = dashboard.get(&app_page).await;
    let products = between(&html, r#"id="products""#, "</div>");
    assert!(
        products.contains("No products yet") && products.contains("PUT /products/"),
        "{products}"
    );
    let key = between(&html, r#"id="stripe-key""#, "</p>");
    assert!(
        key.contains("not set") && key.contains("tally app set-stripe-key"),
        "{key}"
    );

    let (status, body) = put(
        &app,
        "/products/stripe/price_x",
        json!({ "credits": 500, "mode": "one_time", "expires_in_days": 30 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        &app,
        "/products/polar/prod_monthly",
        json!({ "credits": 2000, "credit_type": "image", "mode": "subscription" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let hostile_path = format!(
        "/products/stripe/{}",
        urlencoding_path_segment(HOSTILE_PRODUCT)
    );
    let (status, body) = put(
        &app,
        &hostile_path,
        json!({ "credits": 7, "mode": "one_time" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["product_id"], HOSTILE_PRODUCT);

    let response = app
        .http
        .put(app.url(&format!("/admin/apps/{}/stripe_key", app.app_id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "secret_key": STRIPE_KEY }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);

    let html = dashboard.get(&app_page).await;
    let products = between(&html, r#"id="products""#, "</div>");
    assert!(!products.contains("No products yet"), "{products}");
    let row = between(products, "<code>price_x</code>", "</tr>");
    assert!(
        row.contains("500") && row.contains("one_time") && row.contains("30 days"),
        "{row}"
    );
    let row = between(products, "<code>prod_monthly</code>", "</tr>");
    assert!(
        row.contains("2\u{202f}000")
            && row.contains("image")
            && row.contains("subscription")
            && row.contains("at the end of each period"),
        "{row}"
    );
    // The id is shown, escaped: no markup of it reaches the page.
    assert!(products.contains(HOSTILE_PRODUCT_ESCAPED), "{products}");
    assert!(!html.contains("<b>x</b>"), "{products}");
    // The key is set: the page says so and when, never the key.
    let key = between(&html, r#"id="stripe-key""#, "</p>");
    assert!(key.contains(">set<") && key.contains("updated"), "{key}");
    assert!(!html.contains(STRIPE_KEY) && !html.contains("sk_test_"));
}

#[tokio::test]
async fn the_user_page_shows_auto_top_ups_and_their_latest_charges() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let dashboard = Dashboard::login(&app).await;
    let user_page = format!("/dashboard/apps/{}/users/u1", app.app_id);

    let html = dashboard.get(&user_page).await;
    let topups = between(&html, r#"id="auto-topups""#, "</main>");
    assert!(topups.contains("No auto top-up"), "{topups}");

    let (status, body) = put(
        &app,
        "/credits/auto_topup",
        json!({ "user_id": "u1", "enabled": true, "threshold": 100, "credits": 500,
                "amount": 999, "currency": "usd", "stripe_customer_id": "cus_1",
                "stripe_payment_method_id": "pm_1" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        &app,
        "/credits/auto_topup",
        json!({ "user_id": "u1", "credit_type": "image", "enabled": true, "threshold": 10,
                "credits": 50, "amount": 1500, "currency": "eur",
                "stripe_customer_id": "cus_2", "stripe_payment_method_id": "pm_2",
                "max_per_month": 3 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Charges as workers record them: one declined (Stripe's message is text from outside),
    // then one that succeeded; and the image top-up disabled by Tally after failures.
    for (status, intent, code, decline, message, minutes_ago) in [
        (
            "failed",
            Some("pi_declined"),
            Some("card_declined"),
            Some("insufficient_funds"),
            Some("Your card <i>was</i> declined."),
            5,
        ),
        ("succeeded", Some("pi_paid"), None, None, None, 1),
    ] {
        sqlx::query(
            "INSERT INTO auto_topup_attempts (id, app_id, user_id, credit_type, status, credits,
                 amount, currency, payment_intent_id, error_code, decline_code, error_message,
                 charged, created_at)
             VALUES ($1, $2, 'u1', 'credits', $3, 500, 999, 'usd', $4, $5, $6, $7, true,
                     now() - make_interval(mins => $8))",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(app.app_id)
        .bind(status)
        .bind(intent)
        .bind(code)
        .bind(decline)
        .bind(message)
        .bind(minutes_ago)
        .execute(&app.pool)
        .await
        .expect("attempt");
    }
    sqlx::query(
        "UPDATE auto_topup_settings SET enabled = false, consecutive_failures = 3,
             disabled_reason = 'three charges failed in a row'
         WHERE app_id = $1 AND user_id = 'u1' AND credit_type = 'image'",
    )
    .bind(app.app_id)
    .execute(&app.pool)
    .await
    .expect("disable");

    let html = dashboard.get(&user_page).await;
    let topups = between(&html, r#"id="auto-topups""#, "</main>");
    assert!(!topups.contains("No auto top-up"), "{topups}");
    // Without a Stripe key no charge can be made, and the page says so.
    assert!(html.contains("no Stripe secret key"), "{html}");

    let credits = between(
        topups,
        r#"data-credit-type="credits""#,
        r#"data-credit-type="image""#,
    );
    for shown in [
        ">enabled<",
        "below 100 available",
        "999 usd",
        "<code>cus_1</code>",
        "<code>pm_1</code>",
        "at most 10",
    ] {
        assert!(credits.contains(shown), "{shown} not in {credits}");
    }
    // The latest charges, newest first, with Stripe's refusal escaped.
    let paid = credits.find("pi_paid").expect("the paid charge");
    let declined = credits.find("pi_declined").expect("the declined charge");
    assert!(paid < declined, "{credits}");
    for shown in [
        r#"<span class="tag succeeded">succeeded</span>"#,
        r#"<span class="tag failed">failed</span>"#,
        "<code>card_declined</code>",
        "<code>insufficient_funds</code>",
        "Your card &#60;i&#62;was&#60;/i&#62; declined.",
    ] {
        assert!(credits.contains(shown), "{shown} not in {credits}");
    }
    assert!(!html.contains("<i>was</i>"));

    let image = between(topups, r#"data-credit-type="image""#, "</section>");
    for shown in [
        ">disabled<",
        "three charges failed in a row",
        "below 10 available",
        "1\u{202f}500 eur",
        "<code>cus_2</code>",
        "at most 3",
        "No charges yet.",
    ] {
        assert!(image.contains(shown), "{shown} not in {image}");
    }

    // Once the app has a key the warning goes.
    let response = app
        .http
        .put(app.url(&format!("/admin/apps/{}/stripe_key", app.app_id)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "secret_key": STRIPE_KEY }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let html = dashboard.get(&user_page).await;
    assert!(!html.contains("no Stripe secret key"), "{html}");
    assert!(!html.contains(STRIPE_KEY));
}

/// Percent-encodes every byte of a path segment that is not unreserved.
fn urlencoding_path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
