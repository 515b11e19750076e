//! `/admin/*` and `/dashboard`: the admin token guards both; every app is visible; writes go
//! through the command pipeline with `source: "dashboard"`.

use serde_json::{json, Value};

use crate::credit_types::write;
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
    let client = dashboard_client();
    // Without a session the dashboard answers 200 with the login form.
    let page = client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"type="password""#), "{html}");
    assert!(!html.contains(&app.app_id.to_string()));

    let wrong = post_login(&app, &client, "not-the-token").await;
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let with_key = post_login(&app, &client, &app.api_key).await;
    assert_eq!(with_key.status().as_u16(), 401);

    let login = post_login(&app, &client, ADMIN_TOKEN).await;
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
    let client = dashboard_client();
    let (session, _) = dashboard_session(&app, None).await;
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
    let (csrf, key) = (
        hidden_field(&html, "csrf"),
        hidden_field(&html, "idempotency_key"),
    );
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
    let client = dashboard_client();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(dashboard_session(&app, None).await.0);
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
    let mut request = dashboard_client()
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

#[tokio::test]
async fn admin_figures_count_each_user_once_and_keep_credit_types_apart() {
    let app = spawn_app().await;
    app.add("alice", 100).await;
    for (user, amount) in [("alice", 30), ("bob", 5)] {
        let image = json!({ "user_id": user, "amount": amount, "credit_type": "image" });
        write(&app, "/credits/add", image).await;
    }
    let spend = json!({ "user_id": "alice", "amount": 10, "credit_type": "image" });
    write(&app, "/credits/deduct", spend).await;

    let (_, body) = app.admin_get("/admin/apps").await;
    let figures = body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app_id"] == app.app_id.to_string())
        .unwrap()
        .clone();
    assert_eq!(figures["users"], 2, "one user with two types is one user");
    assert_eq!(figures["outstanding"], 100, "the default type's");
    assert_eq!(figures["added_24h"], 100);
    assert_eq!(figures["spent_24h"], 0);
    assert_eq!(
        figures["credit_types"],
        json!([
            { "credit_type": "credits", "users": 1, "outstanding": 100, "added_24h": 100, "spent_24h": 0 },
            { "credit_type": "image", "users": 2, "outstanding": 25, "added_24h": 35, "spent_24h": 10 }
        ])
    );

    let (status, body) = app
        .admin_get(&format!("/admin/apps/{}/users?sort=balance", app.app_id))
        .await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "one row per user: {body}");
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["balance"], 100);
    assert_eq!(
        users[0]["balances"],
        json!([
            { "credit_type": "credits", "balance": 100, "held": 0 },
            { "credit_type": "image", "balance": 20, "held": 0 }
        ])
    );
    assert_eq!(users[1]["user_id"], "bob");
    assert_eq!(
        users[1]["balance"], 0,
        "bob has no credits of the default type"
    );
    assert_eq!(users[1]["balances"][0]["credit_type"], "image");
}

#[tokio::test]
async fn admin_user_shows_a_balance_per_credit_type_and_filters_history_by_type() {
    let app = spawn_app().await;
    app.add("carol", 50).await;
    let expiring = json!({ "user_id": "carol", "amount": 8, "credit_type": "image", "expires_in_seconds": 3600 });
    let lot = write(&app, "/credits/add", expiring).await;
    let hold = json!({ "user_id": "carol", "amount": 3, "credit_type": "image" });
    let hold = write(&app, "/credits/hold", hold).await;
    let base = format!("/admin/apps/{}", app.app_id);
    // The admin API writes a type too.
    let chat = json!({ "user_id": "carol", "amount": 2, "credit_type": "chat" });
    let (status, added) = app.admin_post(&format!("{base}/credits/add"), chat).await;
    assert_eq!(
        (status, &added["credit_type"], &added["balance_after"]),
        (200, &json!("chat"), &json!(2)),
    );

    let (status, user) = app.admin_get(&format!("{base}/users/carol")).await;
    assert_eq!(status, 200, "{user}");
    // The top level is the default type's, as before types existed.
    assert_eq!(user["balance"], 50);
    assert_eq!(user["held"], 0);
    assert_eq!(user["available"], 50);
    assert_eq!(user["next_expiry"], Value::Null);
    let balances = user["balances"].as_array().unwrap();
    let types: Vec<&str> = balances
        .iter()
        .map(|b| b["credit_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["chat", "credits", "image"]);
    let image = &balances[2];
    assert_eq!(image["balance"], 8);
    assert_eq!(image["held"], 3);
    assert_eq!(image["available"], 5);
    let (_, public) = app
        .get("/credits/balance?user_id=carol&credit_type=image")
        .await;
    assert_eq!(
        image["next_expiry"], public["next_expiry"],
        "as the API reads it"
    );
    assert!(image["next_expiry"]["amount"].as_i64().unwrap() > 0);
    assert_eq!(user["holds"][0]["hold_id"], hold["hold_id"]);
    assert_eq!(user["holds"][0]["credit_type"], "image");
    assert_eq!(user["lots"][0]["credit_type"], "image");
    assert_eq!(user["entries"].as_array().unwrap().len(), 3);
    assert_eq!(user["entries"][0]["credit_type"], "chat");

    let (_, image_only) = app
        .admin_get(&format!("{base}/users/carol?credit_type=image"))
        .await;
    let entries = image_only["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{image_only}");
    assert_eq!(entries[0]["ledger_id"], lot["ledger_id"]);
    let (_, app_wide) = app
        .admin_get(&format!("{base}/entries?credit_type=chat"))
        .await;
    assert_eq!(app_wide["entries"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .admin_get(&format!("{base}/users/carol?credit_type=Image"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "credit_type");

    let (_, nobody) = app.admin_get(&format!("{base}/users/nobody")).await;
    assert_eq!(nobody["balance"], 0);
    assert_eq!(nobody["balances"], json!([]));
}

/// A client for the dashboard: redirects are answers to look at, not to follow.
fn dashboard_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The dashboard's answer to a login with `token`.
async fn post_login(app: &TestApp, client: &reqwest::Client, token: &str) -> reqwest::Response {
    client
        .post(app.url("/dashboard/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

/// The value of the hidden field `name` in a page's HTML.
fn hidden_field(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn the_dashboard_adds_credits_of_a_type_and_shows_each_balance() {
    let app = spawn_app().await;
    app.add("erin", 40).await;
    let client = dashboard_client();
    let (session, _) = dashboard_session(&app, None).await;
    let user_page = format!("/dashboard/apps/{}/users/erin", app.app_id);
    let get = |path: String| {
        let request = client.get(app.url(&path)).header("cookie", &session);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let html = get(user_page.clone()).await;
    assert!(
        html.contains(r#"name="credit_type" value="credits""#),
        "{html}"
    );
    let adjust = |fields: &[(&str, &str)]| {
        client
            .post(app.url(&format!("{user_page}/adjust")))
            .header("cookie", &session)
            .form(fields)
            .send()
    };
    let (csrf, key) = (
        hidden_field(&html, "csrf"),
        hidden_field(&html, "idempotency_key"),
    );
    let posted = adjust(&[
        ("csrf", &csrf),
        ("idempotency_key", &key),
        ("action", "add"),
        ("credit_type", "image"),
        ("amount", "7"),
        ("description", "image pack"),
    ])
    .await
    .unwrap();
    assert_eq!(posted.status().as_u16(), 303);
    let (_, image) = app
        .get("/credits/balance?user_id=erin&credit_type=image")
        .await;
    assert_eq!(image["balance"], 7);

    let html = get(user_page.clone()).await;
    assert!(html.contains(r#"<dd id="balance">40</dd>"#), "{html}");
    assert!(html.contains(r#"<dd id="balance-image">7</dd>"#), "{html}");
    assert!(
        html.contains(r#"<option>image</option>"#),
        "the filter offers the user's types"
    );
    let filtered = get(format!("{user_page}?credit_type=image")).await;
    assert!(filtered.contains("image pack"), "{filtered}");
    assert!(
        !filtered.contains(r#"data-label="Credit type">credits<"#),
        "{filtered}"
    );
    // The apps page and the users list name the other type beside the default one.
    let apps = get("/dashboard".to_string()).await;
    assert!(
        apps.contains(r#"<span class="muted">image 7</span>"#),
        "{apps}"
    );
    let users = get(format!("/dashboard/apps/{}", app.app_id)).await;
    assert!(
        users.contains(r#"<span class="tag">image</span> 7"#),
        "{users}"
    );
    let bad = adjust(&[
        ("csrf", &csrf),
        ("action", "add"),
        ("credit_type", "Not A Type"),
        ("amount", "7"),
    ])
    .await
    .unwrap();
    let location = bad.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.ends_with("?notice=credit_type_invalid"),
        "{location}"
    );
    app.assert_verified().await;
}
