//! Auto top-up charges: the calls to Stripe for the attempts the ledger made.
//!
//! A batch whose change leaves an account below its auto top-up threshold makes an attempt in
//! its own transaction (`store::write::insert_topup_attempts`). Every worker's charger claims
//! uncharged pending attempts (`FOR UPDATE SKIP LOCKED`, then `charge_started_at`: one charger
//! calls for an attempt at a time, and a claim left by a stopped worker lapses after
//! `TALLY_AUTO_TOPUP_RETRY_SECS`), creates one confirmed, off-session PaymentIntent with the attempt's id as
//! `Idempotency-Key`, and publishes Stripe's answer as a command
//! ([`Command::AutoTopupCharge`]) to the user's partition, under an id derived from the
//! attempt: the ledger applies it once, in order with the user's other commands. A charger that
//! stops between Stripe's answer and that command leaves the attempt to another claim, whose
//! call Stripe answers from its idempotency cache: the customer is charged once.
//!
//! The credits themselves arrive only with Stripe's `payment_intent.succeeded` webhook, like
//! any payment (metadata `tally_user_id`, `tally_credits`, `tally_credit_type`,
//! `tally_auto_topup_id`).
//!
//! The app's key is read for each call, opened with `TALLY_SECRET_KEY`, and never logged: the
//! call's errors are reported without the request.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tally_common::command::{Command, Envelope};
use tally_common::credit_type::CreditType;
use tally_common::partition::{partition_of, Names};
use tally_common::plans::{ChargeError, ChargeResult, SecretKey, StoredKey};
use tokio::sync::watch;
use uuid::Uuid;

/// How often the charger looks for attempts to charge.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Attempts claimed at once.
const CLAIM_MAX: i64 = 16;
/// How long one call to Stripe may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Namespace of the command ids of charge results.
const CHARGE_COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x5a1e_7a11_0000_4000_8000_0000_0000_0002);

/// What a charger needs.
pub struct Charger {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub names: Names,
    pub partitions: u32,
    /// How long a claim on an attempt holds before another charger may call for it.
    pub claim_seconds: u32,
    pub stripe_api_base: String,
    pub secret_key: Option<SecretKey>,
    pub http: reqwest::Client,
}

/// An attempt claimed for a call.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    app_id: Uuid,
    user_id: String,
    credit_type: String,
    credits: i64,
    amount: i64,
    currency: String,
}

/// What the call needs besides the attempt.
#[derive(sqlx::FromRow)]
struct Billing {
    enabled: bool,
    stripe_customer_id: String,
    stripe_payment_method_id: String,
    secret: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

/// How a call ended.
enum Answer {
    /// Stripe's final answer, to apply.
    Final(ChargeResult),
    /// Worth another try later (Stripe unreachable, 5xx, 429, an idempotent request still in
    /// flight): the claim lapses and another call is made.
    Retry(String),
}

impl Charger {
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        names: Names,
        config: &crate::WorkerConfig,
    ) -> Self {
        let claim_seconds = config.auto_topup_retry_secs;
        let config = &config.common;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds");
        Self {
            pool,
            js,
            names,
            partitions: config.partitions,
            claim_seconds,
            stripe_api_base: config.stripe_api_base.trim_end_matches('/').to_string(),
            secret_key: config.secret_key.clone(),
            http,
        }
    }

    /// Charges claimed attempts until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match self.claim().await {
                Ok(claimed) => {
                    let calls = claimed.into_iter().map(|attempt| self.charge(attempt));
                    futures::future::join_all(calls).await;
                }
                Err(error) => tracing::warn!(%error, "cannot claim auto top-up attempts"),
            }
        }
    }

    /// Claims the pending attempts not charged yet whose claim, if any, has lapsed.
    async fn claim(&self) -> sqlx::Result<Vec<Claimed>> {
        sqlx::query_as(
            "UPDATE auto_topup_attempts a SET charge_started_at = now()
             FROM (SELECT id FROM auto_topup_attempts
                   WHERE NOT charged AND status = 'pending'
                     AND (charge_started_at IS NULL
                          OR charge_started_at < now() - make_interval(secs => $1))
                   ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) due
             WHERE a.id = due.id
             RETURNING a.id, a.app_id, a.user_id, a.credit_type, a.credits, a.amount, a.currency",
        )
        .bind(f64::from(self.claim_seconds))
        .bind(CLAIM_MAX)
        .fetch_all(&self.pool)
        .await
    }

    async fn charge(&self, attempt: Claimed) {
        let answer = match self.call(&attempt).await {
            Ok(answer) => answer,
            Err(error) => Answer::Retry(format!("cannot read the attempt's settings: {error}")),
        };
        match answer {
            Answer::Final(result) => {
                if let Err(error) = self.publish(&attempt, result).await {
                    // The claim lapses; the next call is answered from Stripe's idempotency
                    // cache.
                    tracing::warn!(attempt.id = %attempt.id, %error, "cannot publish an auto top-up charge's result; it will be asked again");
                }
            }
            Answer::Retry(reason) => {
                tracing::warn!(attempt.id = %attempt.id, reason, retry_in_s = self.claim_seconds, "auto top-up charge not made");
            }
        }
    }

    /// Calls Stripe for `attempt`.
    async fn call(&self, attempt: &Claimed) -> sqlx::Result<Answer> {
        let billing: Option<Billing> = sqlx::query_as(
            "SELECT s.enabled, s.stripe_customer_id, s.stripe_payment_method_id, k.secret, k.nonce
             FROM auto_topup_settings s LEFT JOIN app_stripe_keys k ON k.app_id = s.app_id
             WHERE s.app_id = $1 AND s.user_id = $2 AND s.credit_type = $3",
        )
        .bind(attempt.app_id)
        .bind(&attempt.user_id)
        .bind(&attempt.credit_type)
        .fetch_optional(&self.pool)
        .await?;
        let refused = |code: &str, message: &str| {
            Answer::Final(ChargeResult::Failed {
                payment_intent_id: None,
                error: ChargeError {
                    code: Some(code.to_string()),
                    decline_code: None,
                    message: message.to_string(),
                },
            })
        };
        let Some(billing) = billing else {
            return Ok(refused(
                "auto_topup_deleted",
                "the auto top-up was deleted before its charge",
            ));
        };
        if !billing.enabled {
            return Ok(refused(
                "auto_topup_disabled",
                "the auto top-up was disabled before its charge",
            ));
        }
        let Some(secret) = billing.secret.clone() else {
            return Ok(refused(
                "stripe_key_missing",
                "the app has no Stripe secret key (tally app set-stripe-key)",
            ));
        };
        let stored = StoredKey {
            secret,
            nonce: billing.nonce.clone(),
        };
        let key = match stored.open(attempt.app_id, self.secret_key.as_ref()) {
            Ok(key) => key,
            Err(error) => return Ok(refused("stripe_key_unreadable", &error.to_string())),
        };
        let form = [
            ("amount", attempt.amount.to_string()),
            ("currency", attempt.currency.clone()),
            ("customer", billing.stripe_customer_id.clone()),
            ("payment_method", billing.stripe_payment_method_id.clone()),
            ("off_session", "true".to_string()),
            ("confirm", "true".to_string()),
            ("metadata[tally_user_id]", attempt.user_id.clone()),
            ("metadata[tally_credits]", attempt.credits.to_string()),
            ("metadata[tally_credit_type]", attempt.credit_type.clone()),
            ("metadata[tally_auto_topup_id]", attempt.id.to_string()),
        ];
        let sent = self
            .http
            .post(format!("{}/v1/payment_intents", self.stripe_api_base))
            .bearer_auth(key)
            .header("Idempotency-Key", attempt.id.to_string())
            .form(&form)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Without the error's source chain, which could name the request.
            Err(error) => {
                return Ok(Answer::Retry(format!(
                    "Stripe did not answer ({})",
                    if error.is_timeout() {
                        "timed out"
                    } else if error.is_connect() {
                        "cannot connect"
                    } else {
                        "request failed"
                    }
                )))
            }
        };
        let status = response.status().as_u16();
        tracing::debug!(attempt.id = %attempt.id, status, "Stripe answered an auto top-up charge");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok(interpret(status, &body))
    }

    /// Publishes Stripe's answer to the attempt's user's partition.
    async fn publish(&self, attempt: &Claimed, result: ChargeResult) -> anyhow::Result<()> {
        let command_id = Uuid::new_v5(&CHARGE_COMMAND_NAMESPACE, attempt.id.as_bytes());
        let envelope = Envelope {
            command_id,
            app_id: attempt.app_id,
            request_hash: None,
            accepted_at: Utc::now(),
            command: Command::AutoTopupCharge {
                user_id: attempt.user_id.clone(),
                credit_type: CreditType::parse(&attempt.credit_type).unwrap_or_default(),
                attempt_id: attempt.id,
                result,
            },
            origin: Default::default(),
        };
        let partition = partition_of(attempt.app_id, &attempt.user_id, self.partitions);
        let message_id = command_id.simple().to_string();
        tally_common::broker::publish_command(
            &self.js,
            &self.names,
            partition,
            envelope,
            Some(&message_id),
        )
        .await?;
        Ok(())
    }
}

/// A Stripe message with anything that looks like a secret key masked.
fn redact(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            if word.starts_with("sk_") || word.starts_with("rk_") {
                "[key]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stripe's answer to the creation of a confirmed PaymentIntent.
fn interpret(status: u16, body: &Value) -> Answer {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_string);
    match status {
        200..=299 => {
            let Some(id) = text(body.get("id")) else {
                return Answer::Retry("Stripe answered without a PaymentIntent".into());
            };
            match body.get("status").and_then(Value::as_str) {
                Some("requires_action") => Answer::Final(ChargeResult::ActionRequired {
                    payment_intent_id: id,
                }),
                Some("requires_payment_method") | Some("canceled") => {
                    let error = body.get("last_payment_error");
                    Answer::Final(ChargeResult::Failed {
                        payment_intent_id: Some(id),
                        error: ChargeError {
                            code: text(error.and_then(|e| e.get("code")))
                                .or(Some("payment_failed".into())),
                            decline_code: text(error.and_then(|e| e.get("decline_code"))),
                            message: text(error.and_then(|e| e.get("message")))
                                .map(|m| redact(&m))
                                .unwrap_or_else(|| "the payment failed".into()),
                        },
                    })
                }
                _ => Answer::Final(ChargeResult::Charged {
                    payment_intent_id: id,
                }),
            }
        }
        // An idempotent request still being processed, rate limits, Stripe's own errors.
        409 | 429 | 500..=599 => Answer::Retry(format!("Stripe answered {status}")),
        _ => {
            let error = body.get("error");
            let field = |name: &str| text(error.and_then(|e| e.get(name)));
            Answer::Final(ChargeResult::Failed {
                payment_intent_id: text(error.and_then(|e| e.pointer("/payment_intent/id"))),
                error: ChargeError {
                    code: field("code").or_else(|| field("type")),
                    decline_code: field("decline_code"),
                    message: field("message")
                        .map(|m| redact(&m))
                        .unwrap_or_else(|| format!("Stripe answered {status}")),
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stripes_answers_are_read_as_results() {
        let Answer::Final(ChargeResult::Charged { payment_intent_id }) =
            interpret(200, &json!({ "id": "pi_1", "status": "succeeded" }))
        else {
            panic!("charged")
        };
        assert_eq!(payment_intent_id, "pi_1");
        assert!(matches!(
            interpret(200, &json!({ "id": "pi_2", "status": "requires_action" })),
            Answer::Final(ChargeResult::ActionRequired { .. })
        ));
        let declined = json!({ "error": { "type": "card_error", "code": "card_declined",
            "decline_code": "insufficient_funds", "message": "Your card has insufficient funds.",
            "payment_intent": { "id": "pi_3", "status": "requires_payment_method" } } });
        let Answer::Final(ChargeResult::Failed {
            payment_intent_id,
            error,
        }) = interpret(402, &declined)
        else {
            panic!("failed")
        };
        assert_eq!(payment_intent_id.as_deref(), Some("pi_3"));
        assert_eq!(error.code.as_deref(), Some("card_declined"));
        assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
        for transient in [409, 429, 500, 503] {
            assert!(matches!(interpret(transient, &json!({})), Answer::Retry(_)));
        }
        let Answer::Final(ChargeResult::Failed { error, .. }) = interpret(
            401,
            &json!({ "error": { "type": "invalid_request_error",
                "message": "Invalid API Key provided: sk_test_abc" } }),
        ) else {
            panic!("failed")
        };
        assert!(!error.message.contains("sk_test"), "{}", error.message);
    }
}
