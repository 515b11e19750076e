//! The Rust client (`tally-client`) against the real stack: every call, every error the stack
//! answers, paging, 202 handles, and retries that take effect once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tally_client::webhooks;
use tally_client::{
    AddParams, AlertsParams, AlertsQuery, BatchOperation, CaptureParams, Client,
    CreateEndpointParams, DeductParams, DeliveriesParams, Error, EventsParams, HistoryParams,
    HoldParams, HoldsParams, OperationAnswer, RefundParams, ReleaseParams, UpdateEndpointParams,
    WebhookEventsParams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::deliveries::{always_ok, Receiver};
use crate::harness::{spawn_app, spawn_app_with, Options, TestApp};

fn client(app: &TestApp) -> Client {
    Client::new(&app.api_key, &app.base_url).expect("client")
}

fn add(user: &str, amount: i64) -> AddParams {
    AddParams {
        user_id: user.into(),
        amount,
        ..Default::default()
    }
}

fn deduct(user: &str, amount: i64) -> DeductParams {
    DeductParams {
        user_id: user.into(),
        amount,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_adds_deducts_refunds_and_reads() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();

    let added = credits
        .add(&AddParams {
            description: Some("Starter pack".into()),
            metadata: Some([("order".to_string(), "42".to_string())].into()),
            ..add("user_abc123", 500)
        })
        .await
        .expect("add");
    assert_eq!(
        (added.user_id.as_str(), added.balance_after),
        ("user_abc123", 500)
    );
    let deducted = credits
        .deduct(&deduct("user_abc123", 50))
        .await
        .expect("deduct");
    assert_eq!(deducted.balance_after, 450);
    let refunded = credits
        .refund(&RefundParams {
            ledger_id: deducted.ledger_id,
            amount: Some(20),
            ..Default::default()
        })
        .await
        .expect("refund");
    assert_eq!(refunded.balance_after, 470);
    assert_eq!(refunded.refunded_ledger_id, deducted.ledger_id);

    let balance = credits.balance("user_abc123").await.expect("balance");
    assert_eq!(
        (balance.balance, balance.held, balance.available),
        (470, 0, 470)
    );
    assert_eq!(balance.next_expiry, None);

    let history = credits
        .history(&HistoryParams {
            user_id: "user_abc123".into(),
            ..Default::default()
        })
        .await
        .expect("history");
    let kinds: Vec<(&str, i64)> = history
        .entries
        .iter()
        .map(|entry| (entry.entry_type.as_str(), entry.amount))
        .collect();
    assert_eq!(kinds, [("refund", 20), ("deduct", -50), ("add", 500)]);
    assert_eq!(history.entries[2].metadata["order"], "42");
    assert_eq!(
        history.entries[2].description.as_deref(),
        Some("Starter pack")
    );
    assert_eq!(history.next_cursor, None);

    let events = tally
        .webhooks()
        .events(&WebhookEventsParams {
            provider: Some("stripe".into()),
            ..Default::default()
        })
        .await
        .expect("webhook events");
    assert!(events.events.is_empty());
    assert_eq!(app.ledger_rows().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_holds_capture_and_release() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();
    credits.add(&add("u", 300)).await.expect("add");

    let hold = credits
        .hold(&HoldParams {
            user_id: "u".into(),
            amount: 100,
            expires_in_seconds: Some(600),
            ..Default::default()
        })
        .await
        .expect("hold");
    assert_eq!((hold.balance, hold.available), (300, 200));
    let captured = credits
        .capture(&CaptureParams {
            hold_id: hold.hold_id,
            amount: Some(37),
        })
        .await
        .expect("capture");
    assert_eq!(
        (captured.captured, captured.released, captured.balance_after),
        (37, 63, 263)
    );

    let second = credits
        .hold(&HoldParams {
            user_id: "u".into(),
            amount: 50,
            ..Default::default()
        })
        .await
        .expect("hold");
    let released = credits
        .release(&ReleaseParams {
            hold_id: second.hold_id,
        })
        .await
        .expect("release");
    assert_eq!((released.released, released.available), (50, 263));

    let holds = credits
        .holds(&HoldsParams {
            user_id: "u".into(),
            status: Some("captured".into()),
            ..Default::default()
        })
        .await
        .expect("holds");
    assert_eq!(holds.holds.len(), 1);
    assert_eq!(holds.holds[0].hold_id, hold.hold_id);
    assert_eq!(holds.holds[0].captured, 37);

    let again = credits
        .release(&ReleaseParams {
            hold_id: second.hold_id,
        })
        .await
        .expect_err("a released hold is not active");
    assert!(matches!(again, Error::Conflict(_)), "{again:?}");
    assert_eq!(again.code(), Some("hold_not_active"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_maps_every_error_the_stack_answers() {
    let app = spawn_app().await;
    let tally = Client::builder()
        .api_key(&app.api_key)
        .base_url(&app.base_url)
        .max_retries(0)
        .build()
        .expect("client");
    let credits = tally.credits();
    credits.add(&add("u", 40)).await.expect("add");

    match credits.deduct(&deduct("u", 50)).await {
        Err(Error::InsufficientCredits {
            balance,
            available,
            error,
        }) => {
            assert_eq!((balance, available), (40, Some(40)));
            assert_eq!(
                (error.status, error.code.as_str()),
                (402, "insufficient_credits")
            );
        }
        other => panic!("expected insufficient credits: {other:?}"),
    }

    let zero = credits.add(&add("u", 0)).await.expect_err("amount 0");
    assert!(matches!(zero, Error::BadRequest(_)), "{zero:?}");
    assert_eq!(
        (zero.status(), zero.code()),
        (Some(400), Some("invalid_request"))
    );
    assert_eq!(zero.body().expect("body")["field"], "amount");

    let huge = credits
        .add(&AddParams {
            description: Some("x".repeat(70 * 1024)),
            ..add("u", 1)
        })
        .await
        .expect_err("a body over 64 KiB");
    assert!(matches!(huge, Error::BadRequest(_)), "{huge:?}");
    assert_eq!(
        (huge.status(), huge.code()),
        (Some(413), Some("payload_too_large"))
    );

    let unknown = tally
        .commands()
        .get(Uuid::now_v7())
        .await
        .expect_err("unknown");
    assert!(matches!(unknown, Error::NotFound(_)), "{unknown:?}");
    assert_eq!(unknown.code(), Some("not_found"));
    let malformed = tally
        .commands()
        .get("not-a-uuid")
        .await
        .expect_err("malformed");
    assert!(matches!(malformed, Error::BadRequest(_)), "{malformed:?}");

    let stranger = Client::new("tk_not_a_key", &app.base_url).expect("client");
    let denied = stranger.credits().balance("u").await.expect_err("bad key");
    assert!(matches!(denied, Error::Authentication(_)), "{denied:?}");
    assert_eq!(
        (denied.status(), denied.code()),
        (Some(401), Some("unauthorized"))
    );

    let granted = credits
        .add(&add("u", 10))
        .idempotency_key("k-1")
        .await
        .expect("add");
    let conflict = credits
        .add(&add("u", 11))
        .idempotency_key("k-1")
        .await
        .expect_err("same key, other body");
    assert!(
        matches!(conflict, Error::IdempotencyConflict(_)),
        "{conflict:?}"
    );
    assert_eq!(conflict.code(), Some("idempotency_conflict"));

    let refund = credits
        .refund(&RefundParams {
            ledger_id: granted.ledger_id,
            ..Default::default()
        })
        .await
        .expect("refund");
    let twice = credits
        .refund(&RefundParams {
            ledger_id: granted.ledger_id,
            ..Default::default()
        })
        .await
        .expect_err("nothing left");
    assert!(matches!(twice, Error::Conflict(_)), "{twice:?}");
    assert_eq!(twice.code(), Some("already_refunded"));
    let of_refund = credits
        .refund(&RefundParams {
            ledger_id: refund.ledger_id,
            ..Default::default()
        })
        .await
        .expect_err("a refund is not refundable");
    assert!(matches!(of_refund, Error::BadRequest(_)), "{of_refund:?}");
    assert_eq!(
        (of_refund.status(), of_refund.code()),
        (Some(422), Some("not_refundable"))
    );

    app.nats.stop();
    let unavailable = credits.add(&add("u", 5)).await.expect_err("no broker");
    assert!(
        matches!(unavailable, Error::Unavailable { .. }),
        "{unavailable:?}"
    );
    assert_eq!(unavailable.code(), Some("unavailable"));
    app.nats.restart();

    let closed = Client::new(
        &app.api_key,
        format!("http://{}", crate::harness::free_local_addr()),
    )
    .expect("client");
    let refused = closed
        .credits()
        .balance("u")
        .await
        .expect_err("nothing listens");
    assert!(matches!(refused, Error::Connection(_)), "{refused:?}");
    assert_eq!(refused.status(), None);

    let missing = Client::builder()
        .base_url(&app.base_url)
        .api_key("")
        .build();
    assert!(
        std::env::var_os(tally_client::API_KEY_ENV).is_some()
            || matches!(missing, Err(Error::Config(_)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_pages_through_the_whole_history() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();
    for amount in 1..=7 {
        credits.add(&add("pager", amount)).await.expect("add");
    }

    let all: Vec<i64> = credits
        .history_all_with(HistoryParams {
            user_id: "pager".into(),
            limit: Some(2),
            ..Default::default()
        })
        .map_ok(|entry| entry.amount)
        .try_collect()
        .await
        .expect("history pages");
    assert_eq!(all, [7, 6, 5, 4, 3, 2, 1]);
    let default_pages: Vec<_> = credits
        .history_all("pager")
        .try_collect()
        .await
        .expect("all");
    assert_eq!(default_pages.len(), 7);

    let first = credits
        .history(&HistoryParams {
            user_id: "pager".into(),
            limit: Some(3),
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(first.entries.len(), 3);
    let second = credits
        .history(&HistoryParams {
            user_id: "pager".into(),
            limit: Some(3),
            cursor: first.next_cursor,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(second.entries[0].amount, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_respond_async_handles_wait_for_the_outcome() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();

    let handle = credits
        .add(&add("later", 100))
        .respond_async()
        .await
        .expect("202");
    let command_id = handle.command_id().expect("a command id");
    assert_eq!(
        handle.status_url(),
        Some(format!("/commands/{command_id}").as_str())
    );
    let added = handle.wait().await.expect("applied");
    assert_eq!(added.balance_after, 100);
    let status = tally.commands().get(command_id).await.expect("status");
    assert_eq!(
        (status.status.as_str(), status.http_status),
        ("applied", Some(200))
    );

    let rejected = credits
        .deduct(&deduct("later", 500))
        .respond_async()
        .await
        .expect("202")
        .wait()
        .await
        .expect_err("more than the balance");
    match rejected {
        Error::InsufficientCredits { balance, .. } => assert_eq!(balance, 100),
        other => panic!("expected insufficient credits: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_a_write_whose_answer_was_lost_and_it_takes_effect_once() {
    let app = spawn_app().await;
    let proxy = FaultyProxy::start(&app.base_url, vec![Fault::DropAnswer]).await;
    let tally = Client::new(&app.api_key, proxy.url()).expect("client");

    let added = tally
        .credits()
        .add(&add("once", 70))
        .await
        .expect("retried add");

    assert_eq!(added.balance_after, 70);
    assert_eq!(app.balance("once").await, 70);
    assert_eq!(app.ledger_rows().await, 1);
    let keys = proxy.idempotency_keys();
    assert_eq!(keys.len(), 2, "one attempt lost, one retried");
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_waits_out_retry_after_and_never_retries_other_4xx() {
    let app = spawn_app().await;
    let proxy = FaultyProxy::start(
        &app.base_url,
        vec![Fault::RateLimited {
            retry_after_secs: 1,
        }],
    )
    .await;
    let tally = Client::new(&app.api_key, proxy.url()).expect("client");

    let started = Instant::now();
    let added = tally
        .credits()
        .add(&add("limited", 5))
        .await
        .expect("add after 429");
    assert_eq!(added.balance_after, 5);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After"
    );
    assert_eq!(proxy.idempotency_keys().len(), 2);

    let rejected = tally.credits().deduct(&deduct("limited", 50)).await;
    assert!(
        matches!(rejected, Err(Error::InsufficientCredits { .. })),
        "{rejected:?}"
    );
    assert_eq!(proxy.idempotency_keys().len(), 3, "a 402 is not retried");

    let no_retries = FaultyProxy::start(
        &app.base_url,
        vec![Fault::RateLimited {
            retry_after_secs: 1,
        }],
    )
    .await;
    let impatient = Client::builder()
        .api_key(&app.api_key)
        .base_url(no_retries.url())
        .max_retries(0)
        .build()
        .expect("client");
    let limited = impatient
        .credits()
        .add(&add("limited", 5))
        .await
        .expect_err("429");
    assert!(matches!(limited, Error::RateLimited { .. }), "{limited:?}");
    assert_eq!(
        (limited.status(), limited.code()),
        (Some(429), Some("rate_limited"))
    );
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(app.balance("limited").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_a_timed_out_write_with_the_same_key_and_it_takes_effect_once() {
    let app = spawn_app().await;
    let proxy = FaultyProxy::start(&app.base_url, vec![Fault::StallAnswer]).await;
    let tally = Client::builder()
        .api_key(&app.api_key)
        .base_url(proxy.url())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");

    tally.credits().add(&add("slow", 30)).await.expect("add");
    let deducted = tally
        .credits()
        .deduct(&deduct("slow", 10))
        .await
        .expect("deduct");

    assert_eq!(deducted.balance_after, 20);
    assert_eq!(app.balance("slow").await, 20);
    assert_eq!(app.ledger_rows().await, 2);
    let keys = proxy.idempotency_keys();
    assert_eq!(
        keys.len(),
        3,
        "add timed out once, then retried; deduct once"
    );
    assert_eq!(keys[0], keys[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_503_and_idempotency_in_progress_at_most_max_retries_times() {
    let app = spawn_app().await;
    let unavailable = Fault::Refuse {
        status: 503,
        code: "unavailable",
    };
    let in_progress = Fault::Refuse {
        status: 409,
        code: "idempotency_in_progress",
    };
    let proxy = FaultyProxy::start(&app.base_url, vec![unavailable, in_progress]).await;
    let tally = Client::new(&app.api_key, proxy.url()).expect("client");
    let added = tally
        .credits()
        .add(&add("busy", 9))
        .await
        .expect("third attempt");
    assert_eq!(added.balance_after, 9);
    assert_eq!(proxy.idempotency_keys().len(), 3);

    let always = FaultyProxy::start(&app.base_url, vec![unavailable; 4]).await;
    let tally = Client::new(&app.api_key, always.url()).expect("client");
    let refused = tally
        .credits()
        .add(&add("busy", 9))
        .await
        .expect_err("503 thrice");
    assert!(matches!(refused, Error::Unavailable { .. }), "{refused:?}");
    assert_eq!(
        always.idempotency_keys().len(),
        3,
        "two retries after the first attempt"
    );
    assert_eq!(app.balance("busy").await, 9);
}

fn image(params: AddParams) -> AddParams {
    AddParams {
        credit_type: Some("image".into()),
        ..params
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_writes_and_reads_each_credit_type_apart() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();
    credits.add(&add("u", 100)).await.expect("add credits");

    let added = credits.add(&image(add("u", 30))).await.expect("add image");
    assert_eq!(
        (added.credit_type.as_str(), added.balance_after),
        ("image", 30)
    );
    let spent = credits
        .deduct(&DeductParams {
            credit_type: Some("image".into()),
            ..deduct("u", 10)
        })
        .await
        .expect("deduct image");
    assert_eq!(
        (spent.credit_type.as_str(), spent.balance_after),
        ("image", 20)
    );
    let hold = credits
        .hold(&HoldParams {
            user_id: "u".into(),
            amount: 5,
            credit_type: Some("image".into()),
            ..Default::default()
        })
        .await
        .expect("hold image");
    assert_eq!((hold.credit_type.as_str(), hold.available), ("image", 15));
    let captured = credits
        .capture(&CaptureParams {
            hold_id: hold.hold_id,
            amount: Some(2),
        })
        .await
        .expect("capture");
    assert_eq!(
        (captured.credit_type.as_str(), captured.balance_after),
        ("image", 18),
        "a capture acts on its hold's type"
    );
    let refunded = credits
        .refund(&RefundParams {
            ledger_id: spent.ledger_id,
            ..Default::default()
        })
        .await
        .expect("refund");
    assert_eq!(
        (refunded.credit_type.as_str(), refunded.balance_after),
        ("image", 28)
    );

    let default = credits.balance("u").await.expect("balance");
    assert_eq!(
        (default.credit_type.as_str(), default.balance),
        ("credits", 100)
    );
    let of_image = credits.balance_of("u", "image").await.expect("balance of");
    assert_eq!((of_image.balance, of_image.available), (28, 28));
    let none = credits.balance_of("u", "chat").await.expect("balance of");
    assert_eq!((none.credit_type.as_str(), none.balance), ("chat", 0));
    let all = credits.balances("u").await.expect("balances");
    let balances: Vec<(&str, i64)> = all
        .balances
        .iter()
        .map(|b| (b.credit_type.as_str(), b.balance))
        .collect();
    assert_eq!(balances, [("credits", 100), ("image", 28)]);

    let history = credits
        .history(&HistoryParams {
            user_id: "u".into(),
            credit_type: Some("image".into()),
            ..Default::default()
        })
        .await
        .expect("history");
    assert_eq!(history.entries.len(), 4, "add, deduct, capture, refund");
    assert!(history.entries.iter().all(|e| e.credit_type == "image"));
    let holds = credits
        .holds(&HoldsParams {
            user_id: "u".into(),
            credit_type: Some("credits".into()),
            ..Default::default()
        })
        .await
        .expect("holds");
    assert!(holds.holds.is_empty(), "{holds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batches_type_each_result_by_its_operation() {
    let app = spawn_app().await;
    let tally = client(&app);
    let credits = tally.credits();
    let earlier = credits.add(&add("ann", 50)).await.expect("add");

    let answer = credits
        .batch([
            BatchOperation::Add(image(add("bob", 30))),
            BatchOperation::Deduct(deduct("bob", 20)),
            BatchOperation::Refund(RefundParams {
                ledger_id: earlier.ledger_id,
                amount: Some(5),
                ..Default::default()
            }),
            BatchOperation::Hold(HoldParams {
                user_id: "ann".into(),
                amount: 10,
                ..Default::default()
            }),
            BatchOperation::Refund(RefundParams {
                ledger_id: Uuid::now_v7(),
                ..Default::default()
            }),
        ])
        .await
        .expect("batch");
    let statuses: Vec<u16> = answer.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 402, 200, 200, 404]);
    match &answer.results[0].outcome {
        Ok(OperationAnswer::Add(added)) => {
            assert_eq!(
                (added.credit_type.as_str(), added.balance_after),
                ("image", 30)
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(
            answer.results[1].outcome,
            Err(Error::InsufficientCredits { balance: 0, .. })
        ),
        "no credits of the default type: {:?}",
        answer.results[1].outcome
    );
    match &answer.results[2].outcome {
        Ok(OperationAnswer::Refund(refund)) => assert_eq!(refund.balance_after, 45),
        other => panic!("{other:?}"),
    }
    let Ok(OperationAnswer::Hold(hold)) = &answer.results[3].outcome else {
        panic!("{:?}", answer.results[3].outcome);
    };
    assert!(matches!(answer.results[4].outcome, Err(Error::NotFound(_))));

    // An operation's own key works like that request's Idempotency-Key.
    let capture = BatchOperation::Capture(CaptureParams {
        hold_id: hold.hold_id,
        amount: Some(4),
    })
    .idempotency_key("capture-1");
    let first = credits.batch([capture.clone()]).await.expect("batch");
    let again = credits.batch([capture]).await.expect("batch");
    match (&first.results[0].outcome, &again.results[0].outcome) {
        (Ok(OperationAnswer::Capture(one)), Ok(OperationAnswer::Capture(two))) => {
            assert_eq!(one, two);
            assert_eq!(one.captured, 4);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        app.balance("ann").await,
        41,
        "50 - 5 refunded - 4 captured, once"
    );

    // All or none.
    let applied = credits
        .batch([
            BatchOperation::Add(add("cat", 10)),
            BatchOperation::Deduct(deduct("cat", 4)),
        ])
        .atomic(true)
        .await
        .expect("atomic batch");
    assert!(matches!(
        &applied.results[1].outcome,
        Ok(OperationAnswer::Deduct(deducted)) if deducted.balance_after == 6
    ));
    let rows = app.ledger_rows().await;
    let refused = credits
        .batch([
            BatchOperation::Add(add("cat", 100)),
            BatchOperation::Deduct(DeductParams {
                credit_type: Some("image".into()),
                ..deduct("cat", 1)
            }),
        ])
        .atomic(true)
        .await
        .expect_err("no image credits");
    match &refused {
        Error::BatchRejected {
            failed_index,
            failed,
            error,
        } => {
            assert_eq!(*failed_index, 1);
            assert_eq!((error.status, error.code.as_str()), (422, "batch_rejected"));
            assert!(
                matches!(**failed, Error::InsufficientCredits { balance: 0, .. }),
                "{failed:?}"
            );
        }
        other => panic!("expected a rejected batch: {other:?}"),
    }
    assert_eq!(app.ledger_rows().await, rows, "nothing of it was written");

    // Asynchronously: an atomic batch is one command; a batch that is not, one per operation.
    let handle = credits
        .batch([BatchOperation::Add(add("cat", 1))])
        .atomic(true)
        .respond_async()
        .await
        .expect("202");
    let command_id = handle.command_id().expect("one command");
    assert_eq!(
        handle.status_url(),
        Some(format!("/commands/{command_id}").as_str())
    );
    let later = handle.wait().await.expect("applied");
    assert!(matches!(
        &later.results[0].outcome,
        Ok(OperationAnswer::Add(added)) if added.balance_after == 7
    ));
    let handle = credits
        .batch([
            BatchOperation::Add(add("dan", 3)),
            BatchOperation::Deduct(deduct("dan", 5)),
        ])
        .respond_async()
        .await
        .expect("accepted");
    assert_eq!(handle.command_id(), None);
    let settled = handle.wait().await.expect("every operation settled");
    let statuses: Vec<u16> = settled.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 402]);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_retries_a_batch_whose_answer_was_lost_with_one_key_and_it_applies_once() {
    let app = spawn_app().await;
    let proxy = FaultyProxy::start(&app.base_url, vec![Fault::DropAnswer]).await;
    let tally = Client::new(&app.api_key, proxy.url()).expect("client");

    let answer = tally
        .credits()
        .batch([
            BatchOperation::Add(add("twice", 8)),
            BatchOperation::Deduct(deduct("twice", 3)),
        ])
        .await
        .expect("retried batch");

    assert!(answer.results.iter().all(|r| r.status == 200));
    assert_eq!(app.balance("twice").await, 5);
    assert_eq!(app.ledger_rows().await, 2);
    let keys = proxy.idempotency_keys();
    assert_eq!(keys.len(), 2, "one attempt lost, one retried");
    assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
}

/// What the proxy does to the n-th request it receives; requests past the list pass through.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forwards the request, lets the stack apply it, then closes the connection unanswered.
    DropAnswer,
    /// Forwards the request, lets the stack apply it, then holds the connection unanswered.
    StallAnswer,
    /// Answers 429 without forwarding.
    RateLimited { retry_after_secs: u64 },
    /// Answers this status and `error` code without forwarding.
    Refuse { status: u16, code: &'static str },
}

/// A one-request-per-connection HTTP/1.1 proxy in front of the ingress that injects faults.
struct FaultyProxy {
    addr: std::net::SocketAddr,
    /// The `Idempotency-Key` of each request received, in order.
    keys: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultyProxy {
    async fn start(upstream: &str, faults: Vec<Fault>) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let keys = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(faults);
        let task = {
            let keys = keys.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (keys, seen, faults, upstream) =
                        (keys.clone(), seen.clone(), faults.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let _ = relay(client, &upstream, &keys, &seen, &faults).await;
                    });
                }
            })
        };
        Self { addr, keys, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn idempotency_keys(&self) -> Vec<Option<String>> {
        self.keys.lock().expect("keys").clone()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: &str,
    keys: &Mutex<Vec<Option<String>>>,
    seen: &AtomicUsize,
    faults: &[Fault],
) -> std::io::Result<()> {
    let request = read_request(&mut client).await?;
    let head = String::from_utf8_lossy(&request).to_string();
    let key = head
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("idempotency-key")
                .then(|| value.trim().to_string())
        });
    keys.lock().expect("keys").push(key);
    let fault = faults.get(seen.fetch_add(1, Ordering::SeqCst)).copied();
    if let Some(Fault::RateLimited { retry_after_secs }) = fault {
        let body = r#"{"success":false,"error":"rate_limited","message":"slow down"}"#;
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {retry_after_secs}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    if let Some(Fault::Refuse { status, code }) = fault {
        let body = format!(r#"{{"success":false,"error":"{code}","message":"injected"}}"#);
        let answer = format!(
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
    }
    let mut server = TcpStream::connect(upstream).await?;
    server
        .write_all(&with_header_after_first_line(&request, "connection: close"))
        .await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    match fault {
        Some(Fault::DropAnswer) => return Ok(()),
        Some(Fault::StallAnswer) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Ok(());
        }
        _ => {}
    }
    client
        .write_all(&with_header_after_first_line(&answer, "connection: close"))
        .await?;
    client.shutdown().await
}

/// One HTTP/1.1 request: its head, then `content-length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return Ok(buffer);
            }
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn with_header_after_first_line(message: &[u8], header: &str) -> Vec<u8> {
    let line_end = message
        .windows(2)
        .position(|window| window == b"\r\n")
        .expect("an HTTP message")
        + 2;
    let mut out = message[..line_end].to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message[line_end..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_manages_webhook_endpoints_their_deliveries_and_events() {
    let app = spawn_app_with(Options {
        workers: 0,
        ingress: |config| config.common.webhook_allow_private = true,
        ..Options::default()
    })
    .await;
    let tally = client(&app);
    let endpoints = tally.webhook_endpoints();

    let created = endpoints
        .create(&CreateEndpointParams {
            url: "http://127.0.0.1:9/tally-events".into(),
            events: Some(vec!["balance.low".into()]),
            description: Some("billing emails".into()),
        })
        .await
        .expect("create");
    assert!(created
        .secret
        .as_deref()
        .unwrap_or_default()
        .starts_with("whsec_"));
    let listed = endpoints.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id, listed[0].secret.as_deref()),
        (created.id, None)
    );
    let changed = endpoints
        .update(
            created.id,
            &UpdateEndpointParams {
                enabled: Some(false),
                description: Some(None),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!((changed.enabled, changed.description), (false, None));
    let rotated = endpoints.rotate_secret(created.id).await.expect("rotate");
    assert_ne!(Some(rotated.secret), created.secret);

    // A test ping: an event of the log and a delivery of the endpoint, which is redelivered.
    let ping = endpoints.test(created.id).await.expect("test").event_id;
    let event = tally.events().get(ping).await.expect("event");
    assert_eq!(
        (event.event_type.as_str(), event.user_id.as_deref()),
        ("ping", None)
    );
    let pings: Vec<_> = tally
        .events()
        .list_all(EventsParams {
            event_type: Some("ping".into()),
            ..Default::default()
        })
        .try_collect()
        .await
        .expect("events");
    assert_eq!(pings, vec![event]);
    let deliveries = endpoints
        .deliveries(created.id, &DeliveriesParams::default())
        .await
        .expect("deliveries");
    assert_eq!(deliveries.deliveries.len(), 1);
    let delivery = &deliveries.deliveries[0];
    assert_eq!(
        (delivery.event_id, delivery.status.as_str()),
        (ping, "pending")
    );
    let redelivered = tally
        .webhook_deliveries()
        .redeliver(delivery.id)
        .await
        .expect("redeliver");
    assert_eq!(redelivered.id, delivery.id);

    endpoints.delete(created.id).await.expect("delete");
    assert!(matches!(
        endpoints.get(created.id).await,
        Err(Error::NotFound(_))
    ));
    let refused = endpoints
        .create(&CreateEndpointParams {
            url: "http://127.0.0.1:9/".into(),
            events: Some(vec!["balance.high".into()]),
            ..Default::default()
        })
        .await;
    assert!(matches!(refused, Err(Error::BadRequest(error)) if error.body["field"] == "events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sets_reads_and_drops_balance_alert_thresholds() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let tally = client(&app);
    let alerts = tally.credits().alerts();
    let ana = AlertsQuery {
        user_id: Some("ana".into()),
        ..Default::default()
    };

    let default = alerts
        .set(&AlertsParams {
            thresholds: vec![100, 1000, 100],
            ..Default::default()
        })
        .await
        .expect("set the app's default");
    alerts
        .set(&AlertsParams {
            user_id: Some("ana".into()),
            thresholds: vec![],
            ..Default::default()
        })
        .await
        .expect("set ana's own");
    let own = alerts.get(&ana).await.expect("get");
    alerts.delete(&ana).await.expect("delete");
    let after = alerts.get(&ana).await.expect("get");

    assert_eq!(
        (default.user_id, default.thresholds),
        (None, vec![1000, 100])
    );
    assert_eq!((own.source.as_str(), own.thresholds), ("user", vec![]));
    assert_eq!(
        (after.source.as_str(), after.thresholds),
        ("app", vec![1000, 100])
    );
    let refused = alerts
        .set(&AlertsParams {
            thresholds: vec![0],
            ..Default::default()
        })
        .await;
    assert!(matches!(refused, Err(Error::BadRequest(_))));
}

/// A test ping as the workers deliver it, verified by `tally_client::webhooks::verify` with the
/// endpoint's secret, and after a rotation with either secret (the delivery carries both
/// signatures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_verifies_the_deliveries_the_workers_make() {
    let app = spawn_app_with(Options {
        webhook_allow_private: true,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start(always_ok).await;
    let tally = client(&app);
    let endpoints = tally.webhook_endpoints();
    let created = endpoints
        .create(&CreateEndpointParams {
            url: receiver.url("/tally-events"),
            ..Default::default()
        })
        .await
        .expect("create");
    let first_secret = created.secret.expect("the secret, once");

    let first = endpoints.test(created.id).await.expect("test").event_id;
    let rotated = endpoints.rotate_secret(created.id).await.expect("rotate");
    let second = endpoints.test(created.id).await.expect("test").event_id;
    let calls = receiver.wait_calls(2, Duration::from_secs(20)).await;

    // Deliveries of different events are concurrent, so they may arrive in either order. The
    // first secret verifies both: the first ping may be signed before or during the rotation.
    let mut verified: Vec<_> = calls
        .iter()
        .map(|call| {
            let event = webhooks::verify(&call.body, &call.headers, &first_secret)
                .expect("a ping the first secret signed");
            (event.id, event.event_type, call)
        })
        .collect();
    verified.sort_by_key(|(id, _, _)| *id != first);
    let ids: Vec<_> = verified
        .iter()
        .map(|(id, kind, _)| (*id, kind.as_str()))
        .collect();
    assert_eq!(ids, [(first, "ping"), (second, "ping")]);
    let during = verified[1].2;
    for secret in [&first_secret, &rotated.secret] {
        let event =
            webhooks::verify(&during.body, &during.headers, secret).expect("during the rotation");
        assert_eq!(event.id, second);
    }
    let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";
    assert_eq!(
        webhooks::verify(&during.body, &during.headers, other).unwrap_err(),
        webhooks::VerifyError::InvalidSignature
    );
}
