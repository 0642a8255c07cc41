//! The monthly call budget of custom (self-built) apps
//! (`shared/feishu-platform.md` §1.4): Feishu counts the successful calls
//! of all custom apps of a tenant, except the exempt categories (auth,
//! event subscription, contact, ... : `data/budget-exempt.tsv`), and past
//! the plan's number answers HTTP 429 with code 99991403 until the 1st of
//! the next month, 00:00 Asia/Shanghai.
//!
//! The gateway keeps one count per *budget group*: an app on its own (the
//! group is named after the app), or the apps that name the same
//! `budget_group` (apps of one tenant, which Feishu counts together). On the
//! request path it does two things, both without a round trip:
//!
//! - [`Budgets::check`] (phase `admit`, before any quota is spent): a
//!   counted call of a group whose budget is spent is answered by the
//!   gateway (429, 99991403, `X-Gateway-Error: budget-exhausted`). Spent
//!   means Feishu answered 99991403 this month, or the group's count
//!   reached its `monthly_budget`. Exempt calls always go.
//! - [`Budgets::answered`] (phase `forward`, once the answer's code is
//!   known): a counted call that succeeded (HTTP 2xx and code 0, or no JSON
//!   code: a download) adds one; a 99991403 marks the group spent for the
//!   rest of the month. Failed calls are not counted, like Feishu.
//!
//! The gateway's count is a LOWER bound of Feishu's: calls made with the
//! same apps outside the gateway, or by other custom apps of the tenant not
//! in the group, are not in it, and in-flight calls may pass the limit by
//! their number. Feishu's 99991403 stays the authority.
//!
//! Where the count lives ([`Store`], `store.rs`):
//! - local backend: in the process; with `state_dir` also in
//!   `<state_dir>/budget.<group>.json`, written every
//!   [`SYNC_INTERVAL`] when it changed and at shutdown, read at start (a
//!   crash loses at most the last interval's calls). Without `state_dir` a
//!   restart starts the month's count at 0;
//! - Redis backend: `<key_prefix>budget:{<group>}:<YYYY-MM>`, one `INCR`
//!   per counted call sent off the request path (its reply is the fleet's
//!   total), expiring 35 days after the last one; every
//!   [`SYNC_INTERVAL`] a replica reads the totals of all its groups in one
//!   round trip.
//!
//! Feishu's 99991403 is kept in memory only, per replica: each replica (and
//! each restart) learns it from one counted call that Feishu refuses (and
//! does not count), and a restart is how an operator lifts it after raising
//! the tenant's plan.
//!
//! Metrics (per app; the apps of a group show the group's figures):
//! `feishu_gateway_budget_used{app}`, `feishu_gateway_budget_limit{app}`
//! (apps with a `monthly_budget`) and `feishu_gateway_budget_exhausted{app}`.

mod exempt;
mod month;
mod store;

pub use exempt::{Exempt, EXEMPT_TSV};
pub use month::{unix_now, Month, SHANGHAI_OFFSET_SECS};
pub use store::{Store, BUDGET_KEY_TTL};

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::feishu::codes;
use crate::observe::metrics::{BudgetMetrics, Metrics};

/// How often the counts are written to `state_dir` (local backend) or the
/// fleet's totals read from Redis, and the months turned when idle.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// One budget (`[[apps]] monthly_budget`, `budget_group`): the apps that
/// share a count, and its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetGroup {
    /// `budget_group`, or the app's name for an app on its own.
    pub name: String,
    /// `monthly_budget`: counted calls per month; `None` = not set (the
    /// count is kept and Feishu's 99991403 still stops counted calls).
    pub limit: Option<u64>,
    /// The member apps, as indices into `Config::apps`.
    pub apps: Vec<usize>,
}

/// Every budget group; store apps are in none (Feishu's budget concerns
/// custom apps only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetConfig {
    /// The groups, in the order of their first app.
    pub groups: Vec<BudgetGroup>,
}

/// Why counted calls are answered by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Feishu answered 99991403 this month.
    Feishu,
    /// The group's count reached its `monthly_budget`.
    Counted {
        /// Calls counted this month.
        used: u64,
        /// `monthly_budget`.
        limit: u64,
    },
}

/// A counted call refused because its group's budget is spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The budget group.
    pub group: String,
    /// Who said so.
    pub cause: Cause,
    /// The month in which counted calls go again.
    pub resumes: Month,
    /// Seconds until then (at least 1).
    pub retry_after_secs: u64,
}

impl Exhausted {
    /// The `msg` of the gateway's answer: Feishu's words first, so that
    /// callers matching on them keep working.
    pub fn msg(&self) -> String {
        let why = match self.cause {
            Cause::Feishu => format!(
                "Feishu answered {} for budget group {:?}",
                codes::MONTHLY_QUOTA_EXCEEDED,
                self.group
            ),
            Cause::Counted { used, limit } => format!(
                "feishu-gateway counted {used} calls of the monthly_budget of {limit} for budget group {:?}",
                self.group
            ),
        };
        format!(
            "This month's API call quota has been exceeded: {why}; feishu-gateway answers counted calls itself until {}-01 00:00 Asia/Shanghai",
            self.resumes
        )
    }
}

/// What [`Budgets::carry`] handed over: (new group, old group, month, the
/// old group's count then).
#[derive(Debug, Default)]
pub struct Carried(Vec<(usize, usize, Month, u64)>);

/// The budget groups of a gateway, their counts and where they are kept.
pub struct Budgets {
    exempt: Exempt,
    /// Per app index: its group, if it has one.
    by_app: Vec<Option<usize>>,
    groups: Vec<Group>,
    store: Store,
}

struct Group {
    name: String,
    limit: Option<u64>,
    /// One set of handles per member app.
    metrics: Vec<BudgetMetrics>,
    state: Mutex<State>,
}

/// A group's count for one month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) month: Month,
    /// Counted calls this month: this replica's, or the fleet's total when
    /// it is larger (Redis).
    pub(crate) used: u64,
    /// Feishu answered 99991403 this month.
    pub(crate) feishu_exhausted: bool,
    /// Redis: calls counted here whose `INCR` surely did not reach Redis
    /// (connection refused); sent with the next sync.
    pub(crate) unsent: u64,
    /// Changed since the last save (`state_dir`).
    pub(crate) dirty: bool,
    /// The spent budget was logged this month.
    warned: bool,
}

impl State {
    fn fresh(month: Month) -> State {
        State {
            month,
            used: 0,
            feishu_exhausted: false,
            unsent: 0,
            dirty: false,
            warned: false,
        }
    }

    /// Starts a new count when `now` is in a later month.
    fn roll(&mut self, now: i64) {
        let month = Month::containing(now);
        if month > self.month {
            *self = State {
                dirty: true,
                ..State::fresh(month)
            };
        }
    }
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, turned to `now`'s month.
    fn at(&self, now: i64) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        let before = st.month;
        st.roll(now);
        if st.month != before {
            self.publish(&st);
        }
        st
    }

    fn spent(&self, st: &State) -> bool {
        st.feishu_exhausted || self.limit.is_some_and(|l| st.used >= l)
    }

    /// Sets the member apps' gauges.
    fn publish(&self, st: &State) {
        let spent = i64::from(self.spent(st));
        for m in &self.metrics {
            m.used.set(st.used as i64);
            m.exhausted.set(spent);
        }
    }

    /// Logs, once a month, that counted calls are now answered by the
    /// gateway.
    fn warn_once(&self, st: &mut State) {
        if st.warned || !self.spent(st) {
            return;
        }
        st.warned = true;
        let cause = if st.feishu_exhausted {
            "Feishu answered 99991403"
        } else {
            "the gateway's count reached monthly_budget"
        };
        tracing::warn!(
            group = %self.name,
            used = st.used,
            limit = ?self.limit,
            month = %st.month,
            "monthly call budget spent ({cause}): counted calls are answered by the gateway until {}-01 00:00 Asia/Shanghai",
            st.month.next()
        );
    }
}

impl Budgets {
    /// The groups of `config` for `apps` apps, their gauges registered in
    /// `metrics` (each app's at 0, its limit set), kept in `store`.
    pub fn new(config: &BudgetConfig, apps: usize, metrics: &Metrics, store: Store) -> Budgets {
        let month = Month::now();
        let mut by_app = vec![None; apps];
        let groups = config
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                for &a in &group.apps {
                    if let Some(slot) = by_app.get_mut(a) {
                        *slot = Some(g);
                    }
                }
                Group {
                    name: group.name.clone(),
                    limit: group.limit,
                    metrics: group
                        .apps
                        .iter()
                        .map(|&a| metrics.budget(a, group.limit))
                        .collect(),
                    state: Mutex::new(State::fresh(month)),
                }
            })
            .collect();
        Budgets {
            exempt: Exempt::builtin(),
            by_app,
            groups,
            store,
        }
    }

    /// A live reload: every group of this (new) config that `old` had too,
    /// by name, continues its count — used, Feishu's verdict, the counts
    /// not yet sent to the store (moved: the old generation's sync task is
    /// stopped). Calls the old generation answers after this are added by
    /// [`Budgets::absorb`] once it has drained.
    pub fn carry(&self, old: &Budgets) -> Carried {
        let mut pairs = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            let Some(og) = old.groups.iter().position(|o| o.name == group.name) else {
                continue;
            };
            let mut from = old.groups[og].lock();
            let mut to = group.lock();
            *to = State {
                warned: false,
                ..*from
            };
            from.unsent = 0;
            pairs.push((g, og, from.month, from.used));
            group.publish(&to);
            group.warn_once(&mut to);
        }
        Carried(pairs)
    }

    /// Adds the calls `old` counted after [`Budgets::carry`] (its in-flight
    /// requests, finished on the old generation).
    pub fn absorb(&self, old: &Budgets, carried: &Carried) {
        for &(g, og, month, used) in &carried.0 {
            let (late, unsent) = {
                let mut from = old.groups[og].lock();
                if from.month != month {
                    continue;
                }
                (
                    from.used.saturating_sub(used),
                    std::mem::take(&mut from.unsent),
                )
            };
            if late == 0 && unsent == 0 {
                continue;
            }
            let group = &self.groups[g];
            let mut to = group.lock();
            if to.month == month {
                to.used += late;
                to.unsent += unsent;
                to.dirty = true;
                group.publish(&to);
                group.warn_once(&mut to);
            }
        }
    }

    /// App `app`'s budget as the status page shows it: (group, used this
    /// month, limit, spent), or `None` when the app has no budget group.
    /// Read off the group's gauges (kept current by every count), so the
    /// group's lock, which the request path takes, is not taken here.
    pub fn status(&self, app: usize) -> Option<(String, u64, Option<u64>, bool)> {
        let group = self.group_of(app)?;
        let m = group.metrics.first()?;
        Some((
            group.name.clone(),
            m.used.get().max(0) as u64,
            group.limit,
            m.exhausted.get() == 1,
        ))
    }

    /// Whether Feishu does not count calls to `path`.
    pub fn is_exempt(&self, path: &str) -> bool {
        self.exempt.is_exempt(path)
    }

    fn group_of(&self, app: usize) -> Option<&Group> {
        let g = self.by_app.get(app).copied().flatten()?;
        self.groups.get(g)
    }

    /// Phase `admit`: may a call of `app` (to a path Feishu counts unless
    /// `exempt`) go to Feishu? Refused while its group's budget is spent.
    pub fn check(&self, app: usize, exempt: bool) -> Result<(), Box<Exhausted>> {
        if exempt {
            return Ok(());
        }
        match self.group_of(app) {
            Some(group) => check_at(group, unix_now()),
            None => Ok(()),
        }
    }

    /// Phase `forward`: Feishu answered a call of `app` with `status` and
    /// `code`. A 99991403 marks the group spent for the month; a counted
    /// success adds one (and, with Redis, sends an `INCR` in the
    /// background: call from within the runtime).
    pub fn answered(self: &Arc<Self>, app: usize, exempt: bool, status: u16, code: Option<i64>) {
        let Some(g) = self.by_app.get(app).copied().flatten() else {
            return;
        };
        let group = &self.groups[g];
        let now = unix_now();
        if code == Some(codes::MONTHLY_QUOTA_EXCEEDED) {
            feishu_said_spent(group, now);
            return;
        }
        let success = (200..300).contains(&status) && code.is_none_or(|c| c == codes::OK);
        if exempt || !success {
            return;
        }
        let month = count_one(group, now);
        self.store.counted(self, g, month);
    }

    /// Group `g`'s name.
    pub(crate) fn group_name(&self, g: usize) -> &str {
        &self.groups[g].name
    }

    /// Number of groups.
    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Runs `f` on group `g`'s state (turned to now's month), then
    /// publishes its gauges.
    pub(crate) fn update<T>(&self, g: usize, f: impl FnOnce(&mut State) -> T) -> T {
        let group = &self.groups[g];
        let mut st = group.at(unix_now());
        let out = f(&mut st);
        group.publish(&st);
        group.warn_once(&mut st);
        out
    }

    /// The month, count and whether counted calls are refused, of the
    /// group named `group`, as of now.
    pub fn used(&self, group: &str) -> Option<(Month, u64, bool)> {
        let g = self.groups.iter().find(|g| g.name == group)?;
        let st = g.at(unix_now());
        Some((st.month, st.used, g.spent(&st)))
    }

    /// Loads the kept counts (local backend with `state_dir`); a no-op
    /// otherwise. Problems are logged: the count then starts at 0.
    pub async fn load(&self) {
        self.store.load(self).await;
    }

    /// Turns months, saves or sends what changed, and reads the fleet's
    /// totals (Redis). Runs every [`SYNC_INTERVAL`] and at shutdown.
    pub async fn sync(&self) {
        for g in &self.groups {
            let st = g.at(unix_now());
            g.publish(&st);
        }
        self.store.sync(self).await;
    }

    /// The background task calling [`sync`](Self::sync) every
    /// [`SYNC_INTERVAL`], the first time at once.
    pub fn spawn_sync(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let budgets = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                budgets.sync().await;
            }
        })
    }
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("groups", &self.groups.len())
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn check_at(group: &Group, now: i64) -> Result<(), Box<Exhausted>> {
    let st = group.at(now);
    let cause = if st.feishu_exhausted {
        Cause::Feishu
    } else {
        match group.limit {
            Some(limit) if st.used >= limit => Cause::Counted {
                used: st.used,
                limit,
            },
            _ => return Ok(()),
        }
    };
    Err(Box::new(Exhausted {
        group: group.name.clone(),
        cause,
        resumes: st.month.next(),
        retry_after_secs: (st.month.end_unix() - now).max(1) as u64,
    }))
}

/// Feishu answered 99991403: spent until the month turns.
fn feishu_said_spent(group: &Group, now: i64) {
    let mut st = group.at(now);
    if !st.feishu_exhausted {
        st.feishu_exhausted = true;
        st.dirty = true;
        group.publish(&st);
        group.warn_once(&mut st);
    }
}

/// Counts one call; returns the month it was counted in.
fn count_one(group: &Group, now: i64) -> Month {
    let mut st = group.at(now);
    st.used += 1;
    st.dirty = true;
    group.publish(&st);
    group.warn_once(&mut st);
    st.month
}

#[cfg(test)]
mod tests;
