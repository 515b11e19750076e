//! The README's example: `TALLY_API_KEY=tk_... cargo run -p tally-client --example quickstart`
//! against `./scripts/dev`.

use tally_client::{AddParams, Client, DeductParams, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // TALLY_API_KEY, and TALLY_BASE_URL unless the builder is given one.
    let tally = Client::builder()
        .base_url(
            std::env::var("TALLY_BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        )
        .build()?;

    let added = tally
        .credits()
        .add(&AddParams {
            user_id: "user_abc123".into(),
            amount: 500,
            description: Some("Starter pack".into()),
            ..Default::default()
        })
        .await?;
    println!("added: balance {}", added.balance_after);

    match tally
        .credits()
        .deduct(&DeductParams {
            user_id: "user_abc123".into(),
            amount: 50,
            ..Default::default()
        })
        .await
    {
        Ok(deducted) => println!("deducted: balance {}", deducted.balance_after),
        Err(Error::InsufficientCredits { balance, .. }) => println!("only {balance} credits"),
        Err(other) => return Err(other),
    }

    let balance = tally.credits().balance("user_abc123").await?;
    println!("balance: {}", balance.balance);
    Ok(())
}
