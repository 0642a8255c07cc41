//! Is Redis there? The replica's view of the shared backend: probe, trip
//! after failures, heal, and the local fallback meanwhile (see
//! `docs/quota.md`, "When Redis is unreachable or slow").

use super::*;

/// What changes rarely: for logs, `/readyz` and the fallback-time counter.
pub(super) struct Health {
    pub(super) since: Instant,
    pub(super) last_error: Option<String>,
    pub(super) accounted: Instant,
}

/// Why a call to Redis failed.
#[derive(Debug)]
pub(super) enum Failure {
    Timeout,
    Connection(RedisError),
    Server(RedisError),
}

impl Failure {
    pub(super) fn from_error(e: RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            Failure::Connection(e)
        } else {
            Failure::Server(e)
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // RedisError never carries the URL or the password.
        match self {
            Failure::Timeout => f.write_str("no answer within redis_timeout"),
            Failure::Connection(e) => write!(f, "connection: {e}"),
            Failure::Server(e) => write!(f, "server: {e}"),
        }
    }
}

impl Inner {
    /// The current mode; switches `Healing` to `Shared` once the heal time
    /// has come.
    pub(super) fn mode(&self) -> Mode {
        let mode = Mode::from_u8(self.mode.load(Ordering::Acquire));
        if mode == Mode::Healing && self.now_ns() >= self.heal_at.load(Ordering::Acquire) {
            let mut health = lock(&self.health);
            if self
                .mode
                .compare_exchange(
                    Mode::Healing as u8,
                    Mode::Shared as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                let now = Instant::now();
                let away = now.saturating_duration_since(health.since);
                self.account(&mut health, now);
                health.since = now;
                health.last_error = None;
                if let Some(m) = &self.metrics {
                    m.up.set(1);
                }
                tracing::warn!(
                    target = %self.target,
                    after_secs = away.as_secs(),
                    "quota backend: Redis is back; quotas are shared again"
                );
                return Mode::Shared;
            }
            return Mode::from_u8(self.mode.load(Ordering::Acquire));
        }
        mode
    }

    /// Adds the time since the last accounting to the fallback counter.
    pub(super) fn account(&self, health: &mut Health, now: Instant) {
        if let Some(m) = &self.metrics {
            let d = now.saturating_duration_since(health.accounted);
            m.fallback_seconds.inc_by(d.as_secs_f64());
        }
        health.accounted = now;
    }

    /// Counts a failed call; returns true once it has switched to the fail
    /// mode (at once for a connection error, else when failures have gone on
    /// for [`TRIP_AFTER`] timeouts).
    pub(super) fn failed(&self, failure: &Failure) -> bool {
        self.count(failure);
        if self.mode() != Mode::Shared {
            return true;
        }
        let now = self.now_ns().max(1);
        let since =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        let streak = Duration::from_nanos(now - since.min(now));
        if matches!(failure, Failure::Connection(_)) || streak >= self.timeout * TRIP_AFTER {
            self.degrade(failure);
            return true;
        }
        tracing::debug!(error = %failure, "quota backend: a call failed");
        false
    }

    pub(super) fn count(&self, failure: &Failure) {
        if let Some(m) = &self.metrics {
            match failure {
                Failure::Timeout => m.timeouts.inc(),
                Failure::Connection(_) => m.connection_errors.inc(),
                Failure::Server(_) => m.server_errors.inc(),
            }
        }
    }

    /// Leave shared limiting (logged and counted once per outage).
    pub(super) fn degrade(&self, failure: &Failure) {
        self.failing_since.store(0, Ordering::Release);
        let mut health = lock(&self.health);
        health.last_error = Some(failure.to_string());
        match Mode::from_u8(self.mode.load(Ordering::Acquire)) {
            Mode::Shared => {
                // The fallback first, so no request sees the new mode
                // without it. Drained: the switch adds no burst.
                if let Some(specs) = &self.fallback_specs {
                    let fresh = LocalQuota::with_tokio_clock(specs.clone());
                    for i in 0..specs.len() {
                        fresh.drain(QuotaKey::new(i as u32));
                    }
                    *self.fallback.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Arc::new(fresh));
                }
                // Scopes rebuild theirs, drained, when they see it.
                self.outages.fetch_add(1, Ordering::AcqRel);
                self.mode.store(Mode::Degraded as u8, Ordering::Release);
                self.loaded.store(false, Ordering::Release);
                let now = Instant::now();
                health.since = now;
                health.accounted = now;
                if let Some(m) = &self.metrics {
                    m.fallbacks.inc();
                    m.up.set(0);
                }
                let action = match self.fail {
                    FailMode::Local => "each replica limits locally to 1/replicas of every quota",
                    FailMode::Closed => "limited routes answer 503 until it is back",
                    FailMode::Open => {
                        "limited routes are forwarded WITHOUT a limit until it is back"
                    }
                };
                tracing::error!(
                    target = %self.target,
                    error = %failure,
                    fail = self.fail.as_str(),
                    "quota backend: Redis unavailable; {action}"
                );
            }
            // The heal did not hold: stay on the fallback (its state goes
            // on) and wait for the next probe.
            Mode::Healing => self.mode.store(Mode::Degraded as u8, Ordering::Release),
            Mode::Degraded => {}
        }
    }

    /// Decide by the fail mode.
    pub(super) async fn degraded(
        &self,
        k: &SharedKey,
        fb: Fallback<'_>,
        overflow: Overflow,
        started: Instant,
    ) -> Result<Admit, Rejection> {
        if let Some(m) = &self.metrics {
            m.degraded_requests.inc();
        }
        match self.fail {
            FailMode::Local => match self.fallback_for(fb) {
                Some((fallback, key)) => match fallback.acquire(key, overflow).await {
                    Ok(admit) => Ok(Admit {
                        waited: if admit.waited.is_zero() {
                            admit.waited
                        } else {
                            started.elapsed()
                        },
                        ..admit
                    }),
                    // Report the fleet's limit, not the replica's share.
                    Err(r) => {
                        let limit = match r.limit() {
                            Limit::Window(_) => Limit::Window(k.policy.reported_window()),
                            other => other,
                        };
                        Err(k.reject(r.cause(), limit, r.retry_after()))
                    }
                },
                None => Err(k.unavailable()),
            },
            FailMode::Closed => Err(k.unavailable()),
            FailMode::Open => Ok(unlimited()),
        }
    }

    /// One health probe (see the module docs).
    pub(super) async fn probe(&self) {
        let started = Instant::now();
        match self.mode() {
            Mode::Shared => {
                // The script is loaded once (the first probe, and after each
                // outage); EVALSHA reloads it on NOSCRIPT. Otherwise a PING.
                let mut conn = self.conn.clone();
                let loaded = self.loaded.load(Ordering::Acquire);
                let call = async {
                    if loaded {
                        redis::cmd("PING").query_async::<()>(&mut conn).await
                    } else {
                        self.script.load_async(&mut conn).await.map(|_| ())
                    }
                };
                let limit = if loaded {
                    self.timeout
                } else {
                    self.connect_timeout
                };
                let result = tokio::time::timeout(limit, call).await;
                if let Some(m) = &self.metrics {
                    m.probe.observe(started.elapsed().as_secs_f64());
                }
                match result {
                    Ok(Ok(())) => {
                        self.loaded.store(true, Ordering::Release);
                        self.failing_since.store(0, Ordering::Release);
                    }
                    Ok(Err(e)) => {
                        self.failed(&Failure::from_error(e));
                    }
                    Err(_) => {
                        self.failed(&Failure::Timeout);
                    }
                }
            }
            Mode::Degraded => match self.heal().await {
                Ok(heal_at) => {
                    let mut health = lock(&self.health);
                    if self
                        .mode
                        .compare_exchange(
                            Mode::Degraded as u8,
                            Mode::Healing as u8,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        let at = heal_at.saturating_duration_since(self.epoch);
                        self.heal_at.store(at.as_nanos() as u64, Ordering::Release);
                        health.last_error = None;
                        tracing::info!(
                            target = %self.target,
                            in_ms = heal_at.saturating_duration_since(Instant::now()).as_millis() as u64,
                            "quota backend: Redis answers again; shared limiting resumes at the fleet's heal time"
                        );
                    }
                }
                Err(failure) => {
                    self.count(&failure);
                    lock(&self.health).last_error = Some(failure.to_string());
                }
            },
            Mode::Healing => {}
        }
        if self.mode() != Mode::Shared {
            let mut health = lock(&self.health);
            self.account(&mut health, Instant::now());
        }
        self.settled.store(true, Ordering::Release);
    }

    /// Joins (or starts) the fleet's heal and drains every key from its
    /// time on: two round trips (the script is loaded in the first, the
    /// drains are pipelined in the second). Returns when, on this replica's
    /// clock, to switch back.
    pub(super) async fn heal(&self) -> Result<Instant, Failure> {
        let mut conn = self.conn.clone();
        let sent = Instant::now();
        let grace = self.heal_grace.as_micros() as u64;
        let mut heal = self.script.prepare_invoke();
        heal.key(&self.heal_key).arg("heal").arg(grace);
        let mut first = redis::pipe();
        first.load_script(&self.script).invoke_script(&heal);
        let (_, reply): (String, Vec<i64>) = self.pipeline(&first, &mut conn).await?;
        let (at, ahead) = match reply.as_slice() {
            [at, ahead, ..] => (*at, micros(*ahead)),
            other => {
                return Err(Failure::Server(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "quota script heal reply",
                    format!("{other:?}"),
                ))))
            }
        };
        let drains: Vec<_> = self
            .keys
            .iter()
            .map(|k| {
                let mut call = self.script.prepare_invoke();
                call.key(&k.tat)
                    .key(&k.pause)
                    .arg("drain")
                    .arg(k.t_us)
                    .arg(k.drain_slots)
                    .arg(at);
                call
            })
            .collect();
        // The gateway's engine holds no keys of its own (the request path
        // makes scoped ones): nothing to drain here then, and an empty
        // pipeline is no call to make.
        if !drains.is_empty() {
            let mut second = redis::pipe();
            for call in &drains {
                second.invoke_script(call);
            }
            let _: Vec<Vec<i64>> = self.pipeline(&second, &mut conn).await?;
        }
        self.loaded.store(true, Ordering::Release);
        // Keys this heal did not drain (scoped keys) are floored at their
        // drain by every take and peek from now on.
        self.healed_at_us.store(at.max(0) as u64, Ordering::Release);
        // Redis read its clock somewhere after `sent`: switching at
        // `sent + ahead` ends the local era no later than the heal time.
        Ok(sent + ahead)
    }
}
