//! Balance alert thresholds: the app's default list per credit type (on the app's page) and a
//! user's own list (on the user's page), set or dropped with the API's own functions
//! ([`crate::routes::alerts`]).

use axum::extract::{Path, State};
use axum::response::Response;

use super::access::{page, SignedForm};
use super::app::parse_app;
use super::forms;
use super::notice::{Code, Said};
use super::render::{redirect_with, url};
use super::session::Session;
use crate::admin::queries;
use crate::routes::alerts;
use crate::validate;
use crate::AppState;

/// What a thresholds form asks for.
#[derive(Clone, Copy)]
enum Change {
    /// Sets the form's `thresholds` for its `credit_type`.
    Set,
    /// Drops the list of the form's `credit_type`.
    Drop,
}

/// Sets or drops the list of the form's credit type — the app's default without `user_id`, else
/// that user's own — then goes back to the page the form is on.
async fn change(
    state: &AppState,
    session: &Session,
    app_id: String,
    user_id: Option<String>,
    form: &std::collections::HashMap<String, String>,
    change: Change,
) -> Response {
    page(session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let user_id = user_id
            .map(|user_id| validate::check_user_id("user_id", user_id))
            .transpose()?;
        let back = match &user_id {
            Some(user_id) => format!("/dashboard/apps/{}/users/{}", app.id, url(user_id)),
            None => format!("/dashboard/apps/{}", app.id),
        };
        let credit_type = match forms::credit_type(form) {
            Ok(credit_type) => credit_type,
            Err(code) => return Ok(redirect_with(&back, Said::new(code))),
        };
        let said = match change {
            Change::Set => match forms::thresholds(form) {
                Ok(thresholds) => {
                    alerts::set(&state.pool, app.id, user_id, credit_type, thresholds).await?;
                    Said::new(Code::ThresholdsSaved)
                }
                Err(code) => Said::new(code),
            },
            Change::Drop => {
                alerts::drop_list(&state.pool, app.id, user_id.as_deref(), &credit_type).await?;
                Said::new(Code::ThresholdsDropped)
            }
        };
        Ok(redirect_with(&back, said))
    })
    .await
}

/// Sets the app's default thresholds of a credit type.
pub async fn set_app(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    change(&state, &session, app_id, None, &form, Change::Set).await
}

/// Drops the app's default thresholds of a credit type.
pub async fn drop_app(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    change(&state, &session, app_id, None, &form, Change::Drop).await
}

/// Sets a user's own thresholds of a credit type (none: no alerts for that user).
pub async fn set_user(
    State(state): State<AppState>,
    Path((app_id, user_id)): Path<(String, String)>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    change(&state, &session, app_id, Some(user_id), &form, Change::Set).await
}

/// Drops a user's own thresholds of a credit type: the app's default applies again.
pub async fn drop_user(
    State(state): State<AppState>,
    Path((app_id, user_id)): Path<(String, String)>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    change(&state, &session, app_id, Some(user_id), &form, Change::Drop).await
}
