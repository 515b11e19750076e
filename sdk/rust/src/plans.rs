//! Plans: `products()` (what a provider's price or product buys) and `credits().auto_topup()`
//! (a user's saved card charged when their balance runs low).

use reqwest::Method;

use crate::events::NOTHING;
use crate::resources::encode_path_segment;
use crate::types::*;
use crate::{Client, Error};

fn product_path(provider: &str, product_id: &str) -> String {
    format!(
        "/products/{}/{}",
        encode_path_segment(provider),
        encode_path_segment(product_id)
    )
}

/// `client.products()`.
#[derive(Clone, Copy, Debug)]
pub struct Products<'a> {
    client: &'a Client,
}

impl<'a> Products<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `PUT /products/{provider}/{product_id}`: creates or replaces what the product buys.
    /// `provider` is `stripe` (`product_id` a Price id, `price_...`) or `polar` (a Product id).
    pub async fn put(
        &self,
        provider: &str,
        product_id: &str,
        params: &ProductParams,
    ) -> Result<Product, Error> {
        let path = product_path(provider, product_id);
        self.client
            .json(Method::PUT, &path, NOTHING, Some(params))
            .await
    }

    /// `GET /products`: every product of the app, by provider then product id.
    pub async fn list(&self) -> Result<Vec<Product>, Error> {
        let listed: ProductsResponse = self.client.get("/products", &[]).await?;
        Ok(listed.products)
    }

    /// `DELETE /products/{provider}/{product_id}`: [`Error::NotFound`] for an unknown one.
    pub async fn delete(&self, provider: &str, product_id: &str) -> Result<(), Error> {
        let path = product_path(provider, product_id);
        self.client
            .request(Method::DELETE, &path, NOTHING, NOTHING)
            .await?;
        Ok(())
    }
}

/// `client.credits().auto_topup()`: one user's auto top-up per credit type.
#[derive(Clone, Copy, Debug)]
pub struct AutoTopups<'a> {
    client: &'a Client,
}

impl<'a> AutoTopups<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `PUT /credits/auto_topup`: creates or replaces the user's settings for the credit type.
    pub async fn set(&self, params: &AutoTopupParams) -> Result<AutoTopup, Error> {
        self.client
            .json(Method::PUT, "/credits/auto_topup", NOTHING, Some(params))
            .await
    }

    /// `GET /credits/auto_topup`: the settings, `consecutive_failures` and `last_attempt`;
    /// [`Error::NotFound`] when the user has none for that type.
    pub async fn get(&self, query: &AutoTopupQuery) -> Result<AutoTopup, Error> {
        self.client
            .json(Method::GET, "/credits/auto_topup", Some(query), NOTHING)
            .await
    }

    /// `DELETE /credits/auto_topup`: [`Error::NotFound`] when there were none.
    pub async fn delete(&self, query: &AutoTopupQuery) -> Result<(), Error> {
        self.client
            .request(Method::DELETE, "/credits/auto_topup", Some(query), NOTHING)
            .await?;
        Ok(())
    }
}
