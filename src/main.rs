//! The `feishu-gateway` command: `serve`, `check-config` and `demo` (and the
//! hidden `sim`, the simulated Feishu alone, for the load benchmark). `demo`
//! and `sim` exist only with the `demo` feature (on by default).
//! Kept thin: parse arguments, load config (exiting with every problem
//! listed), build, run, drain on signal.

#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use feishu_gateway::app::Runtime;
use feishu_gateway::config::{LogFormat, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "feishu-gateway",
    version,
    about = "An HTTP gateway in front of the Feishu (Lark) Open Platform API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Path of the TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and list every problem in it.
    CheckConfig {
        /// Path of the TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a simulated Feishu and the gateway in front of it, offline.
    #[cfg(feature = "demo")]
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin endpoints listen.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
    /// Run the simulated Feishu alone (for `benches/load.sh`). Apps are
    /// `cli_bench0000000000`, … with secrets `bench-secret-0000000000`, ….
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    Sim {
        /// Where the fake listens (port 0: any free port; the address is
        /// printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// How many apps the token endpoints accept.
        #[arg(long, default_value_t = 1)]
        apps: usize,
        /// Quota enforcement off (requests are never recorded, no latency).
        #[arg(long)]
        fast: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => serve(&config),
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            admin_listen,
        } => demo(listen, admin_listen),
        #[cfg(feature = "demo")]
        Command::Sim { listen, apps, fast } => sim(listen, apps, fast),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match feishu_gateway::app::load_config(path, &ProcessEnv) {
        Ok(c) => {
            for w in &c.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: ok ({} apps, {} clients, listen {}, admin {})",
                path.display(),
                c.apps.len(),
                c.clients.len(),
                c.listen,
                c.admin_listen
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprint!("{}: {problems}", path.display());
            ExitCode::from(2)
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match feishu_gateway::app::load_config(path, &ProcessEnv) {
        Ok(c) => c,
        Err(problems) => {
            eprint!("{}: {problems}", path.display());
            return ExitCode::from(2);
        }
    };
    let _log_guard = init_logging(config.log.format, &config.log.level);
    let path = path.to_path_buf();
    block_on(async move {
        let mut runtime = match Runtime::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // SIGHUP re-reads the file: apps, clients, keys, routes, limits and
        // allow lists change without a restart (an invalid file changes
        // nothing).
        runtime.spawn_reloader(path, ProcessEnv);
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining in-flight requests");
        runtime.shutdown();
        runtime.wait().await;
        ExitCode::SUCCESS
    })
}

#[cfg(feature = "demo")]
fn demo(listen: SocketAddr, admin_listen: SocketAddr) -> ExitCode {
    let _log_guard = init_logging(LogFormat::Plain, "info");
    block_on(async move {
        let demo = match feishu_gateway::app::demo::start(listen, admin_listen).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("demo: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", feishu_gateway::app::demo::banner(&demo));
        shutdown_signal().await;
        demo.gateway.shutdown();
        demo.gateway.wait().await;
        demo.sim.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(feature = "demo")]
fn sim(listen: SocketAddr, apps: usize, fast: bool) -> ExitCode {
    block_on(async move {
        let sim = match feishu_gateway::app::demo::start_sim(listen, apps, fast).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sim: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // One line, read by benches/load.sh.
        println!("sim listening on {}", sim.base_url());
        shutdown_signal().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Runs `f` on a multi-threaded tokio runtime.
fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stdout through a background writer thread, so a request
/// never waits on a write to stdout. Keep the guard alive until exit: it
/// flushes what is queued.
fn init_logging(format: LogFormat, level: &str) -> feishu_gateway::observe::logging::LogGuard {
    feishu_gateway::observe::logging::init(format, level)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
