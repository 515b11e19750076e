use crate::harness::spawn_app;

#[tokio::test]
async fn health_readiness_metrics_and_openapi_need_no_key() {
    let app = spawn_app().await;
    app.add("u1", 1).await;
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = app.get_text(&app.url("/metrics")).await;
    assert!(metrics.contains("tally_http_requests_total"), "{metrics}");

    let openapi: serde_json::Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/credits/add",
        "/credits/deduct",
        "/credits/refund",
        "/credits/balance",
        "/credits/history",
        "/credits/hold",
        "/credits/capture",
        "/credits/release",
        "/credits/holds",
        "/commands/{command_id}",
        "/webhooks/stripe/{app_id}",
        "/webhooks/polar/{app_id}",
        "/webhooks/events",
        "/webhook_endpoints",
        "/webhook_endpoints/{id}",
        "/webhook_endpoints/{id}/rotate_secret",
        "/webhook_endpoints/{id}/test",
        "/webhook_endpoints/{id}/deliveries",
        "/webhook_deliveries/{id}/redeliver",
        "/events",
        "/events/{id}",
        "/credits/alerts",
    ] {
        assert!(
            openapi["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn the_ledger_is_append_only_in_the_database() {
    let app = spawn_app().await;
    app.add("u1", 5).await;
    for statement in [
        "UPDATE ledger_entries SET amount = 6",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries CASCADE",
    ] {
        let error = sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
}

#[tokio::test]
async fn the_database_refuses_a_malformed_credit_type_on_insert_and_on_update() {
    let app = spawn_app().await;
    app.add("u1", 5).await;
    let insert = sqlx::query(
        "INSERT INTO accounts (app_id, user_id, credit_type) VALUES ($1, 'u2', 'Not A Type')",
    )
    .bind(app.app_id)
    .execute(&app.pool)
    .await
    .expect_err("a malformed type inserted");
    let update = sqlx::query("UPDATE accounts SET credit_type = 'x'||repeat('y', 64)")
        .execute(&app.pool)
        .await
        .expect_err("a malformed type set");
    for error in [insert, update] {
        let database = error.as_database_error().expect("a database error");
        assert_eq!(database.code().as_deref(), Some("23514"), "{error}");
        assert_eq!(
            database.constraint(),
            Some("accounts_credit_type_format"),
            "{error}"
        );
    }
    // A well-formed type is written.
    sqlx::query(
        "INSERT INTO accounts (app_id, user_id, credit_type) VALUES ($1, 'u2', 'image_v2-hd')",
    )
    .bind(app.app_id)
    .execute(&app.pool)
    .await
    .unwrap();
    app.assert_verified().await;
}

#[tokio::test]
async fn verify_reports_a_broken_invariant() {
    let app = spawn_app().await;
    app.add("u1", 5).await;
    app.assert_verified().await;
    sqlx::query("UPDATE accounts SET balance = 6, updated_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let (code, report) = app.cli(&["verify"]).await;
    assert_eq!(code, 1);
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["violations"][0]["check"],
        "balance_is_sum_of_entries"
    );
}

#[tokio::test]
async fn cli_creates_and_lists_apps_with_working_keys() {
    let app = spawn_app().await;
    let (code, created) = app.cli(&["app", "create", "--name", "acme"]).await;
    assert_eq!(code, 0, "{created}");
    let key = created["api_key"].as_str().unwrap();
    assert!(key.starts_with("tk_"));
    let (status, _) = app.get_as(key, "/credits/balance?user_id=u").await;
    assert_eq!(status, 200);
    let (_, listed) = app.cli(&["app", "list"]).await;
    assert!(listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "acme" && a["app_id"] == created["app_id"]));
    let (code, more) = app
        .cli(&[
            "key",
            "create",
            "--app",
            created["app_id"].as_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0);
    assert!(more["api_key"].as_str().unwrap().starts_with("tk_"));
    let (code, _) = app
        .cli(&["key", "create", "--app", &uuid::Uuid::now_v7().to_string()])
        .await;
    assert_eq!(code, 1);
}
