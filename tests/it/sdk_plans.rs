//! The Rust client (`tally-client`) against the real stack: products (what a provider's price or
//! product buys) and users' auto top-up settings.

use tally_client::{AutoTopupParams, AutoTopupQuery, Client, Error, ProductParams};

use crate::harness::{spawn_app_with, Options, TestApp};

fn client(app: &TestApp) -> Client {
    Client::new(&app.api_key, &app.base_url).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_puts_lists_and_deletes_products() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let tally = client(&app);
    let products = tally.products();

    let pack = products
        .put(
            "stripe",
            "price_1Pack",
            &ProductParams {
                credits: 500,
                mode: "one_time".into(),
                expires_in_days: Some(30),
                ..Default::default()
            },
        )
        .await
        .expect("put a one-time pack");
    assert_eq!(
        (
            pack.provider.as_str(),
            pack.product_id.as_str(),
            pack.credits,
            pack.credit_type.as_str(),
            pack.mode.as_str(),
            pack.expires_in_days
        ),
        (
            "stripe",
            "price_1Pack",
            500,
            "credits",
            "one_time",
            Some(30)
        )
    );
    let monthly = products
        .put(
            "polar",
            "0193a000-0000-7000-8000-00000000000a",
            &ProductParams {
                credits: 1000,
                credit_type: Some("image".into()),
                mode: "subscription".into(),
                ..Default::default()
            },
        )
        .await
        .expect("put a subscription");
    assert_eq!(
        (
            monthly.credit_type.as_str(),
            monthly.mode.as_str(),
            monthly.expires_in_days
        ),
        ("image", "subscription", None)
    );

    let listed = products.list().await.expect("list");
    assert_eq!(listed, vec![monthly.clone(), pack.clone()]);

    let replaced = products
        .put(
            "stripe",
            "price_1Pack",
            &ProductParams {
                credits: 600,
                mode: "one_time".into(),
                ..Default::default()
            },
        )
        .await
        .expect("replace");
    assert_eq!((replaced.credits, replaced.expires_in_days), (600, None));
    let refused = products
        .put(
            "stripe",
            "price_1Pack",
            &ProductParams {
                credits: 600,
                mode: "subscription".into(),
                expires_in_days: Some(30),
                ..Default::default()
            },
        )
        .await
        .expect_err("a subscription cannot expire");
    assert!(matches!(refused, Error::BadRequest(_)), "{refused:?}");
    assert_eq!(refused.status(), Some(400));

    products
        .delete("stripe", "price_1Pack")
        .await
        .expect("delete");
    assert_eq!(products.list().await.expect("list"), vec![monthly]);
    let unknown = products
        .delete("stripe", "price_1Pack")
        .await
        .expect_err("deleted already");
    assert!(matches!(unknown, Error::NotFound(_)), "{unknown:?}");
    assert_eq!(unknown.code(), Some("not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_sets_reads_and_deletes_auto_topup_settings() {
    let app = spawn_app_with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let tally = client(&app);
    let auto_topup = tally.credits().auto_topup();
    let settings = AutoTopupParams {
        user_id: "ana".into(),
        credit_type: Some("image".into()),
        enabled: true,
        threshold: 100,
        credits: 1000,
        amount: 999,
        currency: "usd".into(),
        stripe_customer_id: "cus_test123".into(),
        stripe_payment_method_id: "pm_test123".into(),
        max_per_month: Some(5),
    };
    let ana_image = AutoTopupQuery {
        user_id: "ana".into(),
        credit_type: Some("image".into()),
    };
    let ana = AutoTopupQuery {
        user_id: "ana".into(),
        ..Default::default()
    };

    let set = auto_topup.set(&settings).await.expect("set");
    let read = auto_topup.get(&ana_image).await.expect("get");
    assert_eq!(read, set);
    assert_eq!(
        (
            read.user_id.as_str(),
            read.credit_type.as_str(),
            read.enabled,
            read.threshold,
            read.credits,
            read.amount,
            read.currency.as_str(),
            read.stripe_customer_id.as_str(),
            read.stripe_payment_method_id.as_str(),
            read.max_per_month,
        ),
        (
            "ana",
            "image",
            true,
            100,
            1000,
            999,
            "usd",
            "cus_test123",
            "pm_test123",
            5
        )
    );
    assert_eq!(
        (
            read.consecutive_failures,
            read.disabled_reason,
            read.last_attempt
        ),
        (0, None, None)
    );
    let other_type = auto_topup.get(&ana).await.expect_err("none of credits");
    assert!(matches!(other_type, Error::NotFound(_)), "{other_type:?}");

    let defaults = auto_topup
        .set(&AutoTopupParams {
            credit_type: None,
            max_per_month: None,
            enabled: false,
            ..settings.clone()
        })
        .await
        .expect("set with the defaults");
    assert_eq!(
        (
            defaults.credit_type.as_str(),
            defaults.max_per_month,
            defaults.enabled
        ),
        ("credits", 10, false)
    );
    auto_topup.delete(&ana).await.expect("delete credits");

    auto_topup.delete(&ana_image).await.expect("delete image");
    let gone = auto_topup.get(&ana_image).await.expect_err("deleted");
    assert!(matches!(gone, Error::NotFound(_)), "{gone:?}");
    assert_eq!(gone.code(), Some("not_found"));
    let again = auto_topup.delete(&ana_image).await.expect_err("deleted");
    assert!(matches!(again, Error::NotFound(_)), "{again:?}");
    let refused = auto_topup
        .set(&AutoTopupParams {
            threshold: 0,
            ..settings
        })
        .await;
    assert!(matches!(refused, Err(Error::BadRequest(_))), "{refused:?}");
}
