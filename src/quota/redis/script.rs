//! The calls to Redis: `redis.lua` by EVALSHA for one admission, bounded by
//! `redis_timeout`, and the pipelines the pause and peek use. Every failure
//! is classified for [`super::health`].

use super::*;

impl Inner {
    /// One `take`: the admission decision in Redis.
    pub(super) async fn take(&self, k: &SharedKey, allowance: Duration) -> Result<Reply, Failure> {
        let max_wait = allowance.as_micros().min(u64::MAX.into()) as u64;
        let hist = self.metrics.as_ref().map(|m| &m.take);
        let mut call = self.script.prepare_invoke();
        call.key(&k.tat)
            .key(&k.pause)
            .arg("take")
            .arg(k.t_us)
            .arg(k.tau_us)
            .arg(max_wait)
            .arg(self.floor(k));
        match self.call(&call, hist).await?.as_slice() {
            [1, wait, remaining, ..] => Ok(Reply::Go {
                wait: micros(*wait),
                remaining: clamp_u32(*remaining),
            }),
            [0, wait, ..] => Ok(Reply::Limited {
                wait: micros(*wait),
            }),
            [2, left, ..] => Ok(Reply::Paused {
                left: micros(*left),
            }),
            other => Err(Failure::Server(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "quota script reply",
                format!("{other:?}"),
            )))),
        }
    }

    /// One script call within the timeout, timed.
    pub(super) async fn call(
        &self,
        call: &redis::ScriptInvocation<'_>,
        hist: Option<&Histogram>,
    ) -> Result<Vec<i64>, Failure> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        if let Some(h) = hist {
            h.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(v)) => {
                if self.failing_since.load(Ordering::Relaxed) != 0 {
                    self.failing_since.store(0, Ordering::Release);
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(Failure::from_error(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// One pipeline within the timeout, timed as a probe.
    pub(super) async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        conn: &mut Conn,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, pipe.query_async(conn)).await;
        if let Some(m) = &self.metrics {
            m.probe.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::from_error(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }
}
