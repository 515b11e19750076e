use serde_json::json;

use crate::harness::{create_app, spawn_app};

#[tokio::test]
async fn an_app_sees_and_changes_only_its_own_users() {
    let app = spawn_app().await;
    let (_, other_key) = create_app(&app.pool, "other").await;
    let added = app.add("shared-name", 100).await;
    let ledger_id = added["ledger_id"].as_str().unwrap();

    let (_, balance) = app
        .get_as(&other_key, "/credits/balance?user_id=shared-name")
        .await;
    assert_eq!(balance["balance"], 0);
    let (_, history) = app
        .get_as(&other_key, "/credits/history?user_id=shared-name")
        .await;
    assert_eq!(history["entries"], json!([]));

    let response = app
        .http
        .post(app.url("/credits/refund"))
        .bearer_auth(&other_key)
        .header("content-type", "application/json")
        .body(json!({ "ledger_id": ledger_id }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "a foreign ledger_id is 404, never 403"
    );

    let (status, accepted) = app
        .post_with(
            "/credits/add",
            json!({ "user_id": "x", "amount": 1 }),
            &[("prefer", "respond-async")],
        )
        .await;
    assert_eq!(status, 202);
    let (status, _) = app
        .get_as(&other_key, accepted["status_url"].as_str().unwrap())
        .await;
    assert_eq!(status, 404);
    assert_eq!(app.balance("shared-name").await, 100);
}
