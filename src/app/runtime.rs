//! Building the gateway from a [`Config`] and running it.
//!
//! [`Runtime::start`] binds both listeners, starts the token refreshers and
//! serves until [`Runtime::shutdown`] is called; [`Runtime::wait`] returns
//! once in-flight requests have finished (or the grace period ran out).
//! `main` and the tests use the same entry point.
//!
//! While the main listener drains, the admin listener keeps answering, so
//! `/readyz` says 503 (`draining`) until the drain is over; then it stops
//! too.
//!
//! [`Runtime::reload`] and [`Runtime::spawn_reloader`] (SIGHUP) replace the
//! config while serving (`reload.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::build;
use super::reload::{spawn_generation, Generation, Live, ReloadError, Reloaded, Reloader};
use crate::config::{Config, Environment, Problems};
use crate::proxy::Gateway;
use crate::server::admin::{Admin, Readiness};
use crate::server::listener::{self, ConnectionLimit};
use crate::server::status::StatusPage;
use crate::tokens::TokenManager;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upstream client could not be built (e.g. a bad CA file).
    #[error("upstream client: {0}")]
    Upstream(String),
    /// The catalog or quotas could not be built from the config.
    #[error("config: {0}")]
    Config(String),
    /// The listener's TLS certificate or key could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The connection worker threads could not be started.
    #[error("connection workers: {0}")]
    Workers(std::io::Error),
}

/// A running gateway.
pub struct Runtime {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    reloader: Arc<Reloader>,
    readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
}

impl Runtime {
    /// Binds `config.listen` and `config.admin_listen` (port 0 picks a free
    /// port) with the listen backlog `config.listen_backlog` (capped by the
    /// kernel; the value in force is logged) and starts serving.
    pub async fn start(config: Config) -> Result<Runtime, StartError> {
        let listener = bind(config.listen, config.listen_backlog)?;
        let admin = bind(config.admin_listen, config.listen_backlog)?;
        Runtime::start_on(config, listener, admin).await
    }

    /// Starts serving on listeners bound by the caller (whose backlog is
    /// theirs).
    pub async fn start_on(
        config: Config,
        listener: TcpListener,
        admin_listener: TcpListener,
    ) -> Result<Runtime, StartError> {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        if config.sdk_tokens.signing_key.is_none() {
            tracing::info!(
                "no [sdk_tokens] signing key: gateway tokens handed to SDKs will not survive a restart"
            );
        }
        let build::Parts { shared, gateway } = build::parts(&config)?;
        let shared = Arc::new(shared);
        let metrics = Arc::clone(gateway.metrics());
        let tokens = Arc::clone(gateway.tokens());
        // Kept app_tickets first, so the first app-token fetch can use
        // them; missing ones are asked for once the listener serves the
        // event endpoint (spawn_generation).
        let missing_tickets = gateway.store().load_tickets().await;
        // This month's budget counts kept in state_dir (Redis: read by the
        // first sync, at once).
        gateway.budget().load().await;
        let live: Live = Arc::new(ArcSwap::new(Arc::clone(&gateway)));
        let mut refreshers = Vec::new();
        let tls = build::tls_acceptor(&config).map_err(StartError::Tls)?;
        if let Some(tls) = &tls {
            // Reloads on SIGHUP and when the files change; aborted by wait().
            refreshers.push(tls.spawn_reloader(crate::server::tls::DEFAULT_RELOAD_INTERVAL));
        }

        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.admin_listen,
                source,
            })?;
        let (tx, rx) = watch::channel(false);
        // The admin listener stops once the main one has drained.
        let (drained_tx, drained_rx) = watch::channel(false);
        let grace = config.timeouts.shutdown_grace;
        let readiness = Arc::new(Readiness::new(config.timeouts.startup));
        let workers = match config.workers {
            0 => None,
            n => Some(Arc::new(
                crate::workers::Workers::start(n).map_err(StartError::Workers)?,
            )),
        };
        warn_if_few_open_files(&config);
        let main_limit = ConnectionLimit::new(
            "main",
            config.max_connections,
            Some(metrics.listener("main")),
        );
        let admin_limit = ConnectionLimit::new(
            "admin",
            config.admin_max_connections,
            Some(metrics.listener("admin")),
        );
        let main = tokio::spawn({
            let serve = crate::server::serve_limited(
                listener,
                tls,
                workers,
                main_limit,
                crate::server::stack::gateway_service(Arc::clone(&live)),
                wait_for(rx),
                grace,
            );
            async move {
                serve.await;
                let _ = drained_tx.send(true);
            }
        });
        // The status page samples the counters it shows as "last minute"
        // every 10 s; the reloader records what each reload did on it; it
        // reads the long connections' state from `shared` (they outlive a
        // reload).
        let status = Arc::new(StatusPage::new().with_long_connections({
            let shared = Arc::clone(&shared);
            Arc::new(move || shared.long_connections_status())
        }));
        refreshers.push(status.spawn_sampler(Arc::clone(&live)));
        let admin = Admin::new(
            Arc::clone(&live),
            Arc::clone(&readiness),
            Arc::clone(&status),
        );
        refreshers.push(tokio::spawn(log_when_started(
            admin.clone(),
            tokens,
            Arc::clone(&readiness),
        )));
        let admin_srv = tokio::spawn(crate::server::serve_limited(
            admin_listener,
            None,
            None,
            admin_limit,
            admin.service(),
            wait_for(drained_rx),
            grace,
        ));
        // The generation's own tasks (token refreshers, budget sync, store
        // maintenance, ticket resends): a reload replaces them.
        let tasks = spawn_generation(&gateway, missing_tickets);
        tracing::info!(%addr, %admin_addr, apps = config.apps.len(), clients = config.clients.len(), "feishu-gateway listening");
        let reloader = Arc::new(Reloader {
            live,
            shared,
            current: tokio::sync::Mutex::new(Generation { config, tasks }),
            status,
            path: std::sync::Mutex::new(None),
        });
        Ok(Runtime {
            addr,
            admin_addr,
            reloader,
            readiness,
            shutdown: tx,
            servers: vec![main, admin_srv],
            refreshers,
        })
    }

    /// Address of the main listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The gateway's shared state: the current generation (a reload
    /// replaces it).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.reloader.live.load_full()
    }

    /// Replaces the running config with `loaded` (see `reload.rs`): new
    /// requests use it, in-flight ones finish on the old one, unchanged
    /// apps keep their tokens and quota state. With problems, or when the
    /// new parts cannot be built, nothing changes: every problem is logged
    /// and `feishu_gateway_config_reloads_total{result="invalid"}` counts
    /// it.
    pub async fn reload(&self, loaded: Result<Config, Problems>) -> Result<Reloaded, ReloadError> {
        self.reloader.reload(loaded).await
    }

    /// Reads the config file again (the one given to
    /// [`Runtime::spawn_reloader`]) and reloads from it.
    pub async fn reload_file(
        &self,
        env: &(dyn Environment + Sync),
    ) -> Result<Reloaded, ReloadError> {
        self.reloader.reload_file(env).await
    }

    /// Reloads from `path` on every SIGHUP and when the file changes
    /// (modification time or size, looked at every
    /// [`CONFIG_POLL_INTERVAL`]; a Kubernetes ConfigMap update swaps the
    /// file's symlink, which this sees), with secrets read through `env`,
    /// until [`Runtime::wait`]. The TLS certificate has its own reloader on
    /// the same signal.
    pub fn spawn_reloader<E: Environment + Send + Sync + 'static>(
        &mut self,
        path: PathBuf,
        env: E,
    ) {
        *self.reloader.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        let reloader = Arc::clone(&self.reloader);
        self.refreshers.push(tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP: config reload on file change only"))
                .ok();
            let mut seen = file_stamp(&path);
            let mut tick = tokio::time::interval(CONFIG_POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let signalled = tokio::select! {
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                    _ = tick.tick() => false,
                };
                let stamp = file_stamp(&path);
                if signalled {
                    tracing::info!("SIGHUP: reloading the config");
                } else if stamp != seen {
                    tracing::info!(path = %path.display(), "the config file changed: reloading it");
                } else {
                    continue;
                }
                seen = stamp;
                // Outcome logged and counted by the reload itself.
                let _ = reloader.reload_file(&env).await;
            }
        }));
    }

    /// Stops accepting connections; in-flight requests go on, and
    /// `/readyz` answers 503 (`draining`) until they are done.
    pub fn shutdown(&self) {
        self.readiness.drain();
        let _ = self.shutdown.send(true);
    }

    /// Waits until both listeners have drained, then stops the token
    /// refreshers and the event deliveries, and saves (or sends) the budget
    /// counts a last time.
    pub async fn wait(self) {
        for s in self.servers {
            let _ = s.await;
        }
        for r in self.refreshers {
            r.abort();
        }
        for t in self.reloader.current.lock().await.tasks.drain(..) {
            t.abort();
        }
        // The long connections close (their leases released, so another
        // replica takes over at once); events still queued for subscribers
        // are lost (and counted).
        if let Some(lc) = self.reloader.shared.take_long_connections() {
            lc.shutdown().await;
        }
        self.reloader.shared.events().stop();
        let gateway = self.reloader.live.load_full();
        gateway.budget().sync().await;
        // The spans still queued go to the collector (up to 5 s), off the
        // async threads: the export itself runs on this runtime.
        if let Some(t) = self.reloader.shared.tracing().cloned() {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        tracing::info!("feishu-gateway stopped");
    }

    /// Sends the spans queued so far to the collector now (with
    /// `[tracing]`; otherwise nothing to do). Spans are otherwise sent every
    /// 5 s, and at [`Runtime::wait`].
    pub async fn flush_traces(&self) {
        if let Some(t) = self.reloader.shared.tracing().cloned() {
            let _ = tokio::task::spawn_blocking(move || t.flush()).await;
        }
    }
}

/// How often the config file is looked at for a change.
pub const CONFIG_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// What tells a changed config file: its modification time and size
/// (following symlinks), `None` while it cannot be read.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Binds `addr` with the listen backlog `backlog` (capped by the kernel's
/// `somaxconn`, and logged as such).
fn bind(addr: SocketAddr, backlog: u32) -> Result<TcpListener, StartError> {
    let (listener, in_force) =
        listener::bind(addr, backlog).map_err(|source| StartError::Bind { addr, source })?;
    if in_force < backlog {
        tracing::warn!(
            %addr,
            listen_backlog = backlog,
            in_force,
            "listen_backlog is capped by the kernel (net.core.somaxconn)"
        );
    } else {
        tracing::debug!(%addr, listen_backlog = in_force, "listening");
    }
    Ok(listener)
}

/// Warns when the open-files limit (`ulimit -n`) is too low for the
/// configured connection limits: every client connection is a file
/// descriptor, and so is the upstream connection it may hold, plus the
/// process's own files.
fn warn_if_few_open_files(config: &Config) {
    let Some(limit) = listener::open_files_limit() else {
        return;
    };
    let needed = 2 * config.max_connections as u64 + config.admin_max_connections as u64 + 64;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = config.max_connections,
            admin_max_connections = config.admin_max_connections,
            needed,
            "the open-files limit (ulimit -n) is below 2 x max_connections + admin_max_connections + 64: raise it, or lower max_connections, or accept() will fail with EMFILE before the limit is reached"
        );
    }
}

/// Logs once when the start is over (see [`Admin::starting`]): every app's
/// first token call ended, or the start timeout passed; naming the apps
/// left without a token.
async fn log_when_started(admin: Admin, tokens: Arc<TokenManager>, readiness: Arc<Readiness>) {
    while admin.starting() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let timed_out =
        tokio::time::Instant::now() >= readiness.start_deadline() && !tokens.all_settled();
    let without = tokens.apps_without_token();
    if timed_out {
        tracing::warn!(apps_without_token = ?without, "ready: the start timeout (timeouts.startup) passed before every app's first token call ended");
    } else if !without.is_empty() {
        tracing::warn!(apps_without_token = ?without, "ready, but some apps have no token: their requests get 503 until one is fetched (see /readyz)");
    } else {
        tracing::info!("ready: every app holds a token");
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
