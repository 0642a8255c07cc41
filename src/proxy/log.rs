//! Phase `logging`: one access-log line and the request metrics, for every
//! request, whoever answered it.

use http::Response;

use crate::observe::logging::{self, AccessRecord};
use crate::proxy::body::ProxyBody;

use super::{Gateway, RequestCtx};

impl Gateway {
    /// Phase `logging`: one line per request, and the request metrics.
    pub(super) fn logging(&self, ctx: &RequestCtx, resp: &Response<ProxyBody>) {
        let total = ctx.started.elapsed();
        let status = resp.status().as_u16();
        self.metrics.request_done(
            ctx.app,
            ctx.route,
            status,
            ctx.code,
            total,
            ctx.upstream_time,
        );
        logging::access(|| AccessRecord {
            request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            client: ctx.caller.as_ref().map(|c| c.client.name.as_str()),
            key: ctx.caller.as_ref().and_then(|c| c.client.key_id(c.key)),
            app: ctx.app.map(|a| self.apps[a].name.as_str()),
            route: ctx.route.map(|r| self.catalog.route(r).template.as_str()),
            status,
            code: ctx.code,
            total_us: total.as_micros() as u64,
            upstream_us: ctx.upstream_time.map_or(0, |d| d.as_micros() as u64),
            logid: ctx.logid.as_ref().and_then(|v| v.to_str().ok()),
            gateway_error: ctx.gateway_error,
            replayed_after: ctx.replayed_after,
            trace_id: ctx.trace.as_ref().and_then(|t| t.trace_id()),
        });
    }
}
