//! The dashboard's pages for outbound events: an app's webhook endpoints (create, disable,
//! rotate, test, delete), an endpoint's deliveries (redeliver) and balance alert thresholds.
//! Every form is the API's own write, so what it does is read back through the public API. No
//! worker runs: deliveries stay pending, which is all these pages need.

use reqwest::header::{COOKIE, LOCATION};
use serde_json::{json, Value};

use crate::harness::{spawn_app_with, Options, TestApp};

/// A deployment without workers that accepts `http://127.0.0.1` endpoints
/// (`TALLY_WEBHOOK_ALLOW_PRIVATE=true`).
async fn spawn() -> TestApp {
    spawn_app_with(Options {
        workers: 0,
        ingress: |config| config.common.webhook_allow_private = true,
        ..Options::default()
    })
    .await
}

/// A receiver's URL nothing listens on (no worker calls it in these tests).
const RECEIVER: &str = "http://127.0.0.1:9/tally-events";

/// A logged-in dashboard session: its cookie and its CSRF token.
struct Dashboard<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: String,
    csrf: String,
}

/// An answer: its status, its `Location` (a redirect's) and its body.
struct Page {
    status: u16,
    location: String,
    html: String,
}

impl<'a> Dashboard<'a> {
    async fn login(app: &'a TestApp) -> Self {
        let (client, cookie) = app.dashboard_session().await;
        let mut dashboard = Self {
            app,
            client,
            cookie,
            csrf: String::new(),
        };
        let home = dashboard.get("/dashboard").await;
        dashboard.csrf = hidden(&home.html, "csrf");
        dashboard
    }

    async fn page(response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|value| value.to_str().expect("location").to_string())
            .unwrap_or_default();
        Page {
            status,
            location,
            html: response.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Page {
        let response = self
            .client
            .get(self.app.url(path))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .expect("get");
        Self::page(response).await
    }

    /// Posts a form with the session's CSRF token.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        self.post_exactly(path, &form).await
    }

    /// Posts exactly these fields.
    async fn post_exactly(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let response = self
            .client
            .post(self.app.url(path))
            .header(COOKIE, &self.cookie)
            .form(fields)
            .send()
            .await
            .expect("post");
        Self::page(response).await
    }
}

/// The value of the first hidden field `name` of a page.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').expect("closing quote")].to_string()
}

/// The text of the element with `id` (to its first `<`).
fn element_text(html: &str, id: &str) -> String {
    let marker = format!(r#"id="{id}">"#);
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('<').expect("a closing tag")].to_string()
}

async fn api(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&app.api_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

async fn api_endpoints(app: &TestApp) -> Vec<Value> {
    let listed = api(app, reqwest::Method::GET, "/webhook_endpoints", None).await;
    listed["endpoints"].as_array().expect("endpoints").clone()
}

async fn create_endpoint(app: &TestApp) -> String {
    let created = api(
        app,
        reqwest::Method::POST,
        "/webhook_endpoints",
        Some(json!({ "url": RECEIVER })),
    )
    .await;
    created["id"].as_str().expect("id").to_string()
}

async fn endpoint_enabled(app: &TestApp, id: &str) -> bool {
    let path = format!("/webhook_endpoints/{id}");
    let endpoint = api(app, reqwest::Method::GET, &path, None).await;
    endpoint["enabled"].as_bool().expect("enabled")
}

#[tokio::test]
async fn an_endpoint_created_from_the_dashboard_is_the_apis_and_its_secret_is_shown_once() {
    let app = spawn().await;
    let dashboard = Dashboard::login(&app).await;
    let app_page = format!("/dashboard/apps/{}", app.app_id);
    assert!(dashboard
        .get(&app_page)
        .await
        .html
        .contains("No endpoints yet."));

    let created = dashboard
        .post(
            &format!("{app_page}/endpoints"),
            &[
                ("url", RECEIVER),
                ("event.balance.low", "on"),
                ("event.credits.added", "on"),
                ("description", "billing emails"),
            ],
        )
        .await;

    assert_eq!(created.status, 200, "{}", created.html);
    let secret = element_text(&created.html, "new-secret");
    assert!(secret.starts_with("whsec_"), "{secret}");
    let endpoints = api_endpoints(&app).await;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["url"], RECEIVER);
    assert_eq!(
        endpoints[0]["events"],
        json!(["credits.added", "balance.low"])
    );
    assert_eq!(endpoints[0]["description"], "billing emails");
    let listed = dashboard.get(&app_page).await.html;
    assert!(
        listed.contains(RECEIVER) && listed.contains("credits.added, balance.low"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "the secret is shown only once");
    let endpoint_page = dashboard
        .get(&format!(
            "{app_page}/endpoints/{}",
            endpoints[0]["id"].as_str().unwrap()
        ))
        .await;
    assert!(!endpoint_page.html.contains(&secret));
}

#[tokio::test]
async fn dashboard_endpoint_and_threshold_forms_without_a_session_or_csrf_token_change_nothing() {
    let app = spawn().await;
    let dashboard = Dashboard::login(&app).await;
    let app_page = format!("/dashboard/apps/{}", app.app_id);
    let endpoint = [("url", RECEIVER)];

    let forged = dashboard
        .post_exactly(&format!("{app_page}/endpoints"), &endpoint)
        .await;
    let anonymous = reqwest::Client::new()
        .post(app.url(&format!("{app_page}/endpoints")))
        .form(&endpoint)
        .send()
        .await
        .unwrap();
    let thresholds = dashboard
        .post_exactly(&format!("{app_page}/alerts"), &[("thresholds", "100")])
        .await;

    assert_eq!(forged.status, 400);
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(thresholds.status, 400);
    assert!(api_endpoints(&app).await.is_empty());
    let alerts = api(&app, reqwest::Method::GET, "/credits/alerts", None).await;
    assert_eq!(alerts["source"], "none");
}

#[tokio::test]
async fn a_refused_endpoint_form_says_why_with_a_notice_and_creates_nothing() {
    // Without TALLY_WEBHOOK_ALLOW_PRIVATE a loopback URL is refused.
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let dashboard = Dashboard::login(&app).await;
    let app_page = format!("/dashboard/apps/{}", app.app_id);
    let path = format!("{app_page}/endpoints");

    let private = dashboard.post(&path, &[("url", RECEIVER)]).await;
    let unknown_type = dashboard
        .post(
            &path,
            &[
                ("url", "https://93.184.215.14/"),
                ("event.balance.high", "on"),
            ],
        )
        .await;

    assert_eq!(private.status, 303);
    assert_eq!(private.location, format!("{app_page}?notice=url_invalid"));
    assert_eq!(
        unknown_type.location,
        format!("{app_page}?notice=events_invalid")
    );
    assert!(api_endpoints(&app).await.is_empty());
    let shown = dashboard.get(&private.location).await.html;
    assert!(
        shown.contains("url: must be an absolute https URL"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_endpoint_page_sends_a_test_disables_rotates_redelivers_and_deletes() {
    let app = spawn().await;
    let dashboard = Dashboard::login(&app).await;
    let id = create_endpoint(&app).await;
    let page_path = format!("/dashboard/apps/{}/endpoints/{id}", app.app_id);
    let page = dashboard.get(&page_path).await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("No deliveries."), "{}", page.html);

    // A test ping: a delivery of the endpoint, listed on its page.
    let test = dashboard.post(&format!("{page_path}/test"), &[]).await;
    assert_eq!(test.location, format!("{page_path}?notice=test_sent"));
    let deliveries = api(
        &app,
        reqwest::Method::GET,
        &format!("/webhook_endpoints/{id}/deliveries"),
        None,
    )
    .await;
    let delivery = deliveries["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = dashboard.get(&test.location).await.html;
    assert!(
        listed.contains("ping") && listed.contains("pending"),
        "{listed}"
    );

    // Redeliver it.
    let redelivered = dashboard
        .post(&format!("{page_path}/deliveries/{delivery}/redeliver"), &[])
        .await;
    assert_eq!(
        redelivered.location,
        format!("{page_path}?notice=redelivered")
    );

    // Disable, then enable again.
    let disabled = dashboard
        .post(&format!("{page_path}/enabled"), &[("enabled", "false")])
        .await;
    assert_eq!(
        disabled.location,
        format!("{page_path}?notice=endpoint_disabled")
    );
    assert!(!endpoint_enabled(&app, &id).await);
    assert!(element_text(&dashboard.get(&page_path).await.html, "toggle-endpoint") == "Enable");
    dashboard
        .post(&format!("{page_path}/enabled"), &[("enabled", "true")])
        .await;
    assert!(endpoint_enabled(&app, &id).await);

    // Rotate: a new secret, shown once.
    let rotated = dashboard.post(&format!("{page_path}/rotate"), &[]).await;
    assert_eq!(rotated.status, 200);
    assert!(element_text(&rotated.html, "new-secret").starts_with("whsec_"));

    // Delete: gone from the API and the app's page.
    let deleted = dashboard.post(&format!("{page_path}/delete"), &[]).await;
    assert_eq!(
        deleted.location,
        format!("/dashboard/apps/{}?notice=endpoint_deleted", app.app_id)
    );
    assert!(api_endpoints(&app).await.is_empty());
    assert_eq!(dashboard.get(&page_path).await.status, 404);
}

#[tokio::test]
async fn an_endpoint_page_is_404_for_an_unknown_or_deleted_endpoint_and_400_for_a_malformed_id() {
    let app = spawn().await;
    let dashboard = Dashboard::login(&app).await;
    let endpoints = format!("/dashboard/apps/{}/endpoints", app.app_id);

    let unknown = dashboard
        .get(&format!("{endpoints}/{}", uuid::Uuid::now_v7()))
        .await;
    let malformed = dashboard.get(&format!("{endpoints}/not-an-id")).await;
    let bad_filter = dashboard
        .get(&format!(
            "{endpoints}/{}?status=lost",
            create_endpoint(&app).await
        ))
        .await;

    assert_eq!(unknown.status, 404);
    assert_eq!(malformed.status, 400);
    assert_eq!(bad_filter.status, 400);
}

#[tokio::test]
async fn thresholds_set_on_the_dashboard_are_the_apis_and_a_users_own_list_can_be_dropped() {
    let app = spawn().await;
    let dashboard = Dashboard::login(&app).await;
    let app_page = format!("/dashboard/apps/{}", app.app_id);
    let user_page = format!("{app_page}/users/ana");
    let alerts = |query: &'static str| {
        let app = &app;
        async move {
            api(
                app,
                reqwest::Method::GET,
                &format!("/credits/alerts{query}"),
                None,
            )
            .await
        }
    };

    let app_default = dashboard
        .post(
            &format!("{app_page}/alerts"),
            &[("credit_type", "credits"), ("thresholds", "100, 1000")],
        )
        .await;
    assert_eq!(
        app_default.location,
        format!("{app_page}?notice=thresholds_saved")
    );
    assert_eq!(alerts("").await["thresholds"], json!([1000, 100]));
    assert!(dashboard
        .get(&app_page)
        .await
        .html
        .contains("1\u{202f}000, 100"));

    let own = dashboard
        .post(&format!("{user_page}/alerts"), &[("thresholds", "50")])
        .await;
    assert_eq!(own.location, format!("{user_page}?notice=thresholds_saved"));
    let effective = alerts("?user_id=ana").await;
    assert_eq!(
        (
            effective["source"].as_str(),
            effective["thresholds"].clone()
        ),
        (Some("user"), json!([50]))
    );
    let shown = dashboard.get(&user_page).await.html;
    assert!(shown.contains("own list"), "{shown}");

    let refused = dashboard
        .post(&format!("{user_page}/alerts"), &[("thresholds", "0")])
        .await;
    assert_eq!(
        refused.location,
        format!("{user_page}?notice=thresholds_invalid")
    );
    assert_eq!(alerts("?user_id=ana").await["thresholds"], json!([50]));

    let dropped = dashboard
        .post(
            &format!("{user_page}/alerts/drop"),
            &[("credit_type", "credits")],
        )
        .await;
    assert_eq!(
        dropped.location,
        format!("{user_page}?notice=thresholds_dropped")
    );
    assert_eq!(alerts("?user_id=ana").await["source"], "app");
}
