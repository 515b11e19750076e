//! A JetStream cluster of three nodes: `tally migrate` moving the command stream between replica
//! counts while writes go on, and the stream's leader as the fault suite finds it
//! (`faults::cluster_loses_the_stream_leader`).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use serde_json::json;

use crate::faults::ONE_AT_A_TIME;
use crate::harness::{spawn_app_with, Options, TestApp};

/// An existing single-replica stream on a cluster moved to 3 replicas by `tally migrate`, online.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tally_migrate_moves_the_stream_to_three_replicas() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = single_replica_cluster().await;
    let (code, report) = app
        .cli_with(&["migrate"], &[("TALLY_STREAM_REPLICAS", "3")])
        .await;
    assert_eq!(code, 0, "tally migrate failed: {report}");
    let js = connect(&app).await;
    assert_eq!(command_stream_info(&app, &js).await.config.num_replicas, 3);
    // Writes go on while (and after) NATS copies the stream to its new replicas.
    add_applied(&app, "r-1", 5).await;
    assert_eq!(app.balance("r-1").await, 15);
    await_followers_current(&app).await;
    app.assert_verified().await;
}

/// `tally migrate` run while a node is down waits for the cluster to be able to place the new
/// replicas (the node coming back) instead of failing with "no suitable peers".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tally_migrate_waits_for_a_node_to_place_the_new_replicas_on() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = single_replica_cluster().await;
    let leader = stream_leader(&app).await;
    let down = ["n0", "n1", "n2"]
        .into_iter()
        .find(|name| *name != leader)
        .expect("a node other than the stream's");
    tokio::task::block_in_place(|| app.nats_node(down).stop());
    let migrate = app.cli_with(&["migrate"], &[("TALLY_STREAM_REPLICAS", "3")]);
    let comeback = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| app.nats_node(down).restart());
    };
    let ((code, report), ()) = tokio::join!(migrate, comeback);
    assert_eq!(code, 0, "tally migrate failed: {report}");
    await_followers_current(&app).await;
    add_applied(&app, "r-1", 5).await;
    assert_eq!(app.balance("r-1").await, 15);
    app.assert_verified().await;
}

/// A 3-node cluster whose command stream has one replica, with 10 credits applied to `r-1`.
async fn single_replica_cluster() -> TestApp {
    let app = spawn_app_with(Options {
        nats_nodes: 3,
        stream_replicas: 1,
        ..Options::default()
    })
    .await;
    add_applied(&app, "r-1", 10).await;
    app
}

/// The command stream as the cluster describes it now.
async fn command_stream_info(app: &TestApp, js: &jetstream::Context) -> stream::Info {
    let name = tally_common::partition::Names::new(&app.namespace).command_stream();
    js.get_stream(&name)
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info")
}

/// Waits until the command stream has 3 replicas, both followers current.
async fn await_followers_current(app: &TestApp) {
    let js = connect(app).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = command_stream_info(app, &js).await;
        assert_eq!(info.config.num_replicas, 3);
        let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
        if replicas.len() == 2 && replicas.iter().all(|r| r.current) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never caught up: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds credits and waits until they are applied: on a busy machine a cluster that just formed
/// or is copying its stream may outlast the sync timeout, so the answer may be a 202 first.
async fn add_applied(app: &TestApp, user: &str, amount: i64) {
    let (status, body) = app
        .post("/credits/add", json!({ "user_id": user, "amount": amount }))
        .await;
    match status {
        200 => {}
        202 => {
            let done = app.wait_applied(body["command_id"].as_str().unwrap()).await;
            assert_eq!(done["status"], "applied", "{done}");
        }
        _ => panic!("add failed: {status} {body}"),
    }
}

/// Waits until the stream reports a leader other than `old`.
pub(crate) async fn wait_for_new_leader(app: &TestApp, old: &str) -> String {
    let js = connect(app).await;
    loop {
        if let Some(leader) = current_leader(app, &js).await {
            if leader != old {
                return leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JetStream client connected to every node of the app's cluster.
async fn connect(app: &TestApp) -> jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> = app
        .nats_url
        .split(',')
        .map(|url| url.parse().expect("NATS URL"))
        .collect();
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(tally_common::broker::reconnect_delay)
        .connect(servers)
        .await
        .expect("connect to the cluster");
    jetstream::new(client)
}

/// The stream's leader as the cluster reports it now, if it answers within half a second.
async fn current_leader(app: &TestApp, js: &jetstream::Context) -> Option<String> {
    let name = tally_common::partition::Names::new(&app.namespace).command_stream();
    let info = tokio::time::timeout(Duration::from_millis(500), async {
        js.get_stream(&name).await.ok()?.get_info().await.ok()
    })
    .await
    .ok()??;
    info.cluster.and_then(|cluster| cluster.leader)
}

/// The name of the command stream's current leader, waiting for one to be elected.
pub(crate) async fn stream_leader(app: &TestApp) -> String {
    let js = connect(app).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leader) = current_leader(app, &js).await {
            return leader;
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
