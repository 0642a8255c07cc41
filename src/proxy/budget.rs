//! The monthly call budget's two seams on the request path
//! ([`crate::budget`]): the check in `admit`, before any quota is spent,
//! and the count in `forward`, once Feishu's answer and its code are known.
use http::StatusCode;

use crate::proxy::error::GatewayError;

use super::{Gateway, RequestCtx};

impl Gateway {
    /// In `admit`: a counted call of an app whose budget is spent (Feishu
    /// said 99991403 this month, or the count reached `monthly_budget`) is
    /// answered here: 429, 99991403, `X-Gateway-Error: budget-exhausted`.
    /// Exempt calls (contact, auth, ...) always go.
    pub(super) fn budget_check(&self, ctx: &RequestCtx) -> Result<(), GatewayError> {
        let Some(app) = ctx.app else {
            return Ok(());
        };
        self.budget
            .check(app, ctx.budget_exempt)
            .map_err(GatewayError::BudgetExhausted)
    }

    /// In `forward`, on the answer that goes back (after any replay): a
    /// counted success adds one; Feishu's 99991403 stops counted calls
    /// until the month turns. Nothing here waits for Redis.
    pub(super) fn budget_count(&self, ctx: &RequestCtx, status: StatusCode, code: Option<i64>) {
        if let Some(app) = ctx.app {
            self.budget
                .answered(app, ctx.budget_exempt, status.as_u16(), code);
        }
    }
}
