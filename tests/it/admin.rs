//! `/admin/*` and `/dashboard`: the admin token guards both; every app is visible; writes go
//! through the command pipeline with `source: "dashboard"`.

use serde_json::{json, Value};

use crate::harness::{create_app, spawn_app, TestApp, ADMIN_TOKEN};

impl TestApp {
    async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.get_as(ADMIN_TOKEN, path).await
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(
            path,
            &body.to_string(),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
        )
        .await
    }
}

#[tokio::test]
async fn admin_api_requires_the_admin_token() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_raw(
            "/admin/apps",
            r#"{"name":"sneaky"}"#,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let anonymous = app.http.get(app.url("/admin/apps")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let (status, body) = app.get("/admin/apps").await;
    assert_eq!(status, 401, "an API key is not an admin token: {body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = app
        .get_as("test-admin-token-wrong000000", "/admin/apps")
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post_raw(
            &format!("/admin/apps/{}/credits/add", app.app_id),
            &json!({ "user_id": "u", "amount": 5 }).to_string(),
            &[
                ("authorization", &format!("Bearer {}", app.api_key)),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(app.ledger_rows().await, 0);
}

#[tokio::test]
async fn admin_api_lists_every_app_with_its_figures() {
    let app = spawn_app().await;
    let (other_id, other_key) = create_app(&app.pool, "other").await;
    app.add("alice", 100).await;
    app.deduct("alice", 30).await;
    let (status, _) = app.get_as(&other_key, "/credits/balance?user_id=bob").await;
    assert_eq!(status, 200);

    let (status, body) = app.admin_get("/admin/apps").await;
    assert_eq!(status, 200, "{body}");
    let apps = body["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 2);
    let test = apps
        .iter()
        .find(|a| a["app_id"] == app.app_id.to_string())
        .unwrap();
    assert_eq!(test["users"], 1);
    assert_eq!(test["outstanding"], 70);
    assert_eq!(test["added_24h"], 100);
    assert_eq!(test["spent_24h"], 30);
    assert!(apps
        .iter()
        .any(|a| a["app_id"] == other_id.to_string() && a["users"] == 0));

    let (status, body) = app
        .admin_get(&format!("/admin/apps/{}/stats", app.app_id))
        .await;
    assert_eq!(status, 200, "{body}");
    let days = body["days"].as_array().unwrap();
    assert_eq!(days.len(), 14);
    assert_eq!(days.last().unwrap()["added"], 100);
    assert_eq!(days.last().unwrap()["spent"], 30);
}

#[tokio::test]
async fn admin_users_page_by_prefix_and_sort() {
    let app = spawn_app().await;
    for (user, amount) in [("team-a", 5), ("team-b", 50), ("team-c", 20), ("solo", 1)] {
        app.add(user, amount).await;
    }
    let base = format!("/admin/apps/{}/users", app.app_id);
    let (status, body) = app
        .admin_get(&format!("{base}?prefix=team-&sort=balance&limit=2"))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-b", "team-c"]);
    assert_eq!(body["next_page"], 1);
    let (_, body) = app
        .admin_get(&format!("{base}?prefix=team-&sort=balance&limit=2&page=1"))
        .await;
    let ids: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["team-a"]);
    assert_eq!(body["next_page"], Value::Null);

    let (status, body) = app.admin_get(&format!("{base}?sort=size")).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "sort");
    let (status, _) = app.admin_get("/admin/apps/not-a-uuid/users").await;
    assert_eq!(status, 400);
    let (status, _) = app
        .admin_get(&format!("/admin/apps/{}/users", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admin_user_history_pages_with_a_cursor_and_filters() {
    let app = spawn_app().await;
    for amount in 1..=5 {
        app.add("pager", amount).await;
    }
    app.deduct("pager", 2).await;
    let base = format!("/admin/apps/{}/users/pager", app.app_id);
    let mut seen = Vec::new();
    let mut url = format!("{base}?limit=2");
    loop {
        let (status, body) = app.admin_get(&url).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["balance"], 13);
        assert_eq!(body["available"], 13);
        for entry in body["entries"].as_array().unwrap() {
            seen.push(entry["amount"].as_i64().unwrap());
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => url = format!("{base}?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, [-2, 5, 4, 3, 2, 1]);

    let (_, body) = app.admin_get(&format!("{base}?type=deduct")).await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 1);
    let (status, body) = app.admin_get(&format!("{base}?cursor=bogus")).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "cursor");
    let (status, body) = app.admin_get(&format!("{base}?source=web")).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "source");
}

#[tokio::test]
async fn admin_writes_go_through_the_pipeline_as_the_dashboard() {
    let app = spawn_app().await;
    let base = format!("/admin/apps/{}/credits", app.app_id);
    let (status, added) = app
        .admin_post(
            &format!("{base}/add"),
            json!({ "user_id": "carol", "amount": 40, "description": "goodwill" }),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["balance_after"], 40);
    let (status, body) = app
        .admin_post(
            &format!("{base}/deduct"),
            json!({ "user_id": "carol", "amount": 50 }),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"], "insufficient_credits");
    let (status, refunded) = app
        .admin_post(
            &format!("{base}/refund"),
            json!({ "ledger_id": added["ledger_id"], "amount": 15 }),
        )
        .await;
    assert_eq!(status, 200, "{refunded}");
    assert_eq!(refunded["balance_after"], 25);
    let (status, body) = app
        .admin_post(
            &format!("{base}/add"),
            json!({ "user_id": "carol", "amount": 0 }),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "amount");

    // The app's own API sees the entries, marked as the dashboard's.
    let (_, history) = app.get("/credits/history?user_id=carol").await;
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries.iter().all(|entry| entry["source"] == "dashboard"),
        "{history}"
    );

    let (status, detail) = app
        .admin_get(&format!(
            "/admin/entries/{}",
            added["ledger_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["refundable"], 25);
    assert_eq!(detail["refunds"].as_array().unwrap().len(), 1);
    let (_, body) = app
        .admin_get(&format!(
            "/admin/apps/{}/entries?source=dashboard",
            app.app_id
        ))
        .await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 2);
    app.assert_verified().await;
}

#[tokio::test]
async fn dashboard_login_sets_a_strict_http_only_cookie_and_rejects_a_wrong_token() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Without a session the dashboard answers 200 with the login form.
    let page = client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"type="password""#), "{html}");
    assert!(!html.contains(&app.app_id.to_string()));

    let wrong = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let with_key = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", app.api_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status().as_u16(), 401);

    let login = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(ADMIN_TOKEN));
    let session = cookie.split(';').next().unwrap().to_string();
    let apps = client
        .get(app.url("/dashboard"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(apps.status().as_u16(), 200);
    let csp = apps.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"));
    assert!(apps.text().await.unwrap().contains(&app.app_id.to_string()));

    // A form without its CSRF token changes nothing.
    let forged = client
        .post(app.url(&format!(
            "/dashboard/apps/{}/users/mallory/adjust",
            app.app_id
        )))
        .header("cookie", &session)
        .form(&[("action", "add"), ("amount", "5"), ("description", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    assert_eq!(app.ledger_rows().await, 0);
    // A tampered session is no session: the login form again.
    let tampered = client
        .get(app.url("/dashboard"))
        .header("cookie", format!("{session}0"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status().as_u16(), 200);
    let html = tampered.text().await.unwrap();
    assert!(html.contains(r#"type="password""#) && !html.contains(&app.app_id.to_string()));
}

#[tokio::test]
async fn admin_api_creates_apps_issues_and_revokes_keys() {
    let app = spawn_app().await;
    let (status, created) = app
        .admin_post("/admin/apps", json!({ "name": "Second" }))
        .await;
    assert_eq!(status, 200, "{created}");
    let key = created["api_key"].as_str().unwrap().to_string();
    let (status, _) = app.get_as(&key, "/credits/balance?user_id=x").await;
    assert_eq!(status, 200);
    let (status, body) = app.admin_post("/admin/apps", json!({ "name": "" })).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "name");

    let base = format!("/admin/apps/{}", created["app_id"].as_str().unwrap());
    let (status, issued) = app.admin_post(&format!("{base}/keys"), json!({})).await;
    assert_eq!(status, 200, "{issued}");
    let (_, listed) = app.admin_get(&format!("{base}/keys")).await;
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        !listed.to_string().contains(&key),
        "only prefixes are listed"
    );
    let first = keys
        .iter()
        .find(|k| key.starts_with(k["prefix"].as_str().unwrap()))
        .unwrap();
    let revoke = format!("{base}/keys/{}/revoke", first["key_id"].as_str().unwrap());
    let (status, _) = app.admin_post(&revoke, json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = app.admin_post(&revoke, json!({})).await;
    assert_eq!(status, 404, "a revoked key is not active");

    let secrets = format!("{base}/webhook-secrets");
    let (status, body) = app
        .admin_post(&secrets, json!({ "provider": "paypal", "secret": "x" }))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "provider");
    let (status, _) = app
        .admin_post(
            &secrets,
            json!({ "provider": "stripe", "secret": "whsec_abc" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, listed) = app.admin_get(&format!("{base}/keys")).await;
    assert_eq!(listed["webhook_secrets"][0]["provider"], "stripe");
}

#[tokio::test]
async fn a_resent_dashboard_form_or_admin_write_with_its_key_applies_once() {
    let app = spawn_app().await;
    // The admin API honours Idempotency-Key like the public API.
    let path = format!("/admin/apps/{}/credits/add", app.app_id);
    let body = json!({ "user_id": "dora", "amount": 7 }).to_string();
    let headers = [
        ("authorization", format!("Bearer {ADMIN_TOKEN}")),
        ("content-type", "application/json".to_string()),
        ("idempotency-key", "admin-add-1".to_string()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (first, one) = app.post_raw(&path, &body, &headers).await;
    let (second, two) = app.post_raw(&path, &body, &headers).await;
    assert_eq!((first, second), (200, 200), "{one} {two}");
    assert_eq!(one["ledger_id"], two["ledger_id"]);
    assert_eq!(app.balance("dora").await, 7);

    // A dashboard form carries the key drawn when its page was rendered: sent twice (a double
    // click), it applies once.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let user_page = format!("/dashboard/apps/{}/users/dora", app.app_id);
    let html = client
        .get(app.url(&user_page))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hidden = |name: &str| {
        let marker = format!(r#"name="{name}" value=""#);
        let start = html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {html}"))
            + marker.len();
        html[start..start + html[start..].find('"').unwrap()].to_string()
    };
    let (csrf, key) = (hidden("csrf"), hidden("idempotency_key"));
    for _ in 0..2 {
        let posted = client
            .post(app.url(&format!("{user_page}/adjust")))
            .header("cookie", &session)
            .form(&[
                ("csrf", csrf.as_str()),
                ("idempotency_key", key.as_str()),
                ("action", "add"),
                ("amount", "5"),
                ("description", "goodwill"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status().as_u16(), 303);
    }
    assert_eq!(app.balance("dora").await, 12);
    assert_eq!(app.ledger_rows().await, 2);
}

#[tokio::test]
async fn logging_out_ends_the_session_for_every_copy_of_its_cookie() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let login = client
            .post(app.url("/dashboard/login"))
            .form(&[("token", ADMIN_TOKEN)])
            .send()
            .await
            .unwrap();
        let cookie = login.headers()["set-cookie"].to_str().unwrap();
        sessions.push(cookie.split(';').next().unwrap().to_string());
    }
    assert_ne!(sessions[0], sessions[1], "two logins share a session");
    let page = |session: String| {
        let client = client.clone();
        let url = app.url("/dashboard");
        async move {
            let response = client
                .get(url)
                .header("cookie", session)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, html) = page(sessions[0].clone()).await;
    assert_eq!(status, 200);
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("a csrf field") + marker.len();
    let csrf = &html[start..start + html[start..].find('"').unwrap()];
    let logout = client
        .post(app.url("/dashboard/logout"))
        .header("cookie", &sessions[0])
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 303);
    // A copy of the logged-out cookie is refused (the login form); the other session lives on.
    let (status, html) = page(sessions[0].clone()).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"type="password""#) && !html.contains(&app.app_id.to_string()));
    let (status, html) = page(sessions[1].clone()).await;
    assert_eq!(status, 200);
    assert!(html.contains(&app.app_id.to_string()));
}

/// Logs in to the dashboard as a browser on `host` would: the session cookie (`name=value`) and
/// the whole `Set-Cookie` line.
async fn dashboard_session(app: &TestApp, host: Option<&str>) -> (String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client
        .post(app.url("/dashboard/login"))
        .form(&[("token", ADMIN_TOKEN)]);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let login = request.send().await.unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let line = login.headers()["set-cookie"].to_str().unwrap().to_string();
    (line.split(';').next().unwrap().to_string(), line)
}

#[tokio::test]
async fn the_session_cookie_is_secure_except_on_a_loopback_host() {
    let app = spawn_app().await;
    let (_, remote) = dashboard_session(&app, Some("tally.example.com")).await;
    assert!(remote.contains("; Secure"), "{remote}");
    let (_, local) = dashboard_session(&app, None).await;
    assert!(!local.contains("Secure"), "{local}");
}

#[tokio::test]
async fn a_notice_shows_only_the_dashboards_own_messages() {
    let app = spawn_app().await;
    let (session, _) = dashboard_session(&app, None).await;
    let page = |query: &'static str| {
        let (app, session) = (&app, session.clone());
        async move {
            reqwest::Client::new()
                .get(app.url(&format!("/dashboard{query}")))
                .header("cookie", session)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let forged = page(
        "?ok=Call%20support%20at%20555-0100&error=Your%20account%20is%20locked&notice=Call%20us",
    )
    .await;
    assert!(
        !forged.contains("555-0100") && !forged.contains("locked") && !forged.contains("Call us")
    );
    assert!(!forged.contains("role=\"alert\""), "{forged}");
    let real = page("?notice=insufficient_credits&balance=40").await;
    assert!(
        real.contains("Not enough credits: 40 can be spent"),
        "{real}"
    );
}

#[tokio::test]
async fn dashboard_forms_are_read_only_with_a_session_and_only_up_to_their_limit() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let big = "n".repeat(200 * 1024);
    // Without a session a form is refused as it arrives: the login page, nothing created.
    let anonymous = client
        .post(app.url("/dashboard/apps"))
        .form(&[("name", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous
        .text()
        .await
        .unwrap()
        .contains(r#"type="password""#));
    // With one, a form past 64 KiB is 413.
    let (session, _) = dashboard_session(&app, None).await;
    let oversized = client
        .post(app.url("/dashboard/apps"))
        .header("cookie", &session)
        .form(&[("name", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 413);
    let apps: i64 = sqlx::query_scalar("SELECT count(*) FROM apps")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(apps, 1);
}

#[tokio::test]
async fn app_figures_past_i64_stop_at_its_largest_value_instead_of_failing() {
    let app = spawn_app().await;
    // Two balances that each fit, whose sum does not (written directly: no API can add that
    // much in a test's time).
    sqlx::query(
        "INSERT INTO accounts (app_id, user_id, balance) VALUES ($1, 'rich_a', $2), ($1, 'rich_b', $2)",
    )
    .bind(app.app_id)
    .bind(i64::MAX - 1)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, body) = app.admin_get("/admin/apps").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apps"][0]["outstanding"], i64::MAX);
}
