//! `mesh-proxy`: the sidecar's command line. Thin: parse flags, call the library, map errors
//! to exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_config::policy::{HttpAttrs, Policy, Request};
use mesh_config::SpiffeId;
use mesh_proxy::plan::IdentityPlan;
use mesh_proxy::run::{self, RunError};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "The zt-mesh sidecar: mutual TLS both ways and a zone-to-zone allowlist",
    after_help = "Examples:
  mesh-proxy check --config sidecar.toml      # validate config, policy and certificates
  mesh-proxy run   --config sidecar.toml      # serve (SIGHUP reloads, SIGTERM drains)
  mesh-proxy explain --policy policy.toml --from frontend/web --to orders/api

Exit codes: 0 ok (explain: allowed), 1 invalid config or certificate (explain: denied),
2 bad usage, 3 the proxy could not start (port in use, no usable certificate)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    #[command(after_help = "Example:
  mesh-proxy run --config sidecar.toml

Prints one JSON event per line to the configured sinks (stdout by default), starting with
proxy.started, which lists the addresses it listens on. Policy and certificate files are
re-read when they change or on SIGHUP; SIGTERM stops accepting and drains open connections
for [limits] drain_timeout.")]
    Run {
        /// The sidecar.toml to run.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a sidecar.toml, its policy and its certificate files, then exit.
    #[command(after_help = "Example:
  mesh-proxy check --config sidecar.toml

Errors name the file, line and key at fault.")]
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Answer \"may A call B?\" from a policy file, naming the deciding rule.
    #[command(after_help = "Examples:
  mesh-proxy explain --policy policy.toml --from frontend/web --to orders/api
  mesh-proxy explain --policy policy.toml \\
      --from spiffe://example.org/ns/orders/sa/checkout \\
      --to spiffe://example.org/ns/payments/sa/charge --method POST --path /charge

--from and --to take a SPIFFE ID or zone/workload (in the policy's trust domain).
Exits 0 when allowed, 1 when denied.")]
    Explain {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "ID")]
        from: String,
        #[arg(long, value_name = "ID")]
        to: String,
        /// HTTP method, for rules with method conditions.
        #[arg(long, requires = "path")]
        method: Option<String>,
        /// HTTP path, for rules with path conditions.
        #[arg(long, requires = "method")]
        path: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(after_help = "Examples:
  mesh-proxy completions bash > /etc/bash_completion.d/mesh-proxy
  mesh-proxy completions zsh > \"${fpath[1]}/_mesh-proxy\"
  mesh-proxy completions fish > ~/.config/fish/completions/mesh-proxy.fish")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Explain { policy, from, to, method, path } => explain(policy, &from, &to, method, path),
        Command::Completions { shell } => completions(shell),
    }
}

/// How long an exiting process waits for its queued output lines (see `mesh_runtime::output`).
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// One error line on stderr, then the exit code. Through the output thread, with a bounded
/// wait: a closed or stalled stderr can neither panic nor hold the exit.
fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    mesh_runtime::output::stderr().line(&format!("mesh-proxy: error: {msg}"));
    mesh_runtime::output::flush_all(EXIT_FLUSH);
    ExitCode::from(code)
}

/// Prints one line of a command's result (`check`, `explain`). A closed or failing stdout
/// ends the command with exit code 1 (for `explain`: as if denied, which fails closed) and an
/// error line, never a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            return fail(1, format!("stdout: {e}"));
        }
    };
}

/// `completions SHELL`: the script for every subcommand and flag. Generated into memory and
/// written with `out!` (clap_complete's own writer panics on a closed stdout).
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "mesh-proxy", &mut script);
    out!("{}", String::from_utf8_lossy(&script).trim_end());
    ExitCode::SUCCESS
}

fn run(config: PathBuf) -> ExitCode {
    // Diagnostics (`tracing`, filtered by MESH_LOG or RUST_LOG) go to stderr through the
    // output thread; `check` and `explain` print their results directly.
    mesh_runtime::diagnostics::init();
    let prepared = match run::prepare(&config) {
        Ok(p) => p,
        Err(e) => return fail(start_code(&e), e),
    };
    // TOKIO_WORKER_THREADS=1 asks for one thread of work: a current-thread runtime gives it,
    // running the accept loops and every connection on that thread, without the
    // work-stealing queues, atomics and cross-thread wake-ups of a one-worker multi-thread
    // runtime (whose main thread also sits apart, waiting in block_on).
    let one_thread = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(3, format!("cannot start the runtime: {e}")),
    };
    let ran = rt.block_on(async {
        // The signals are this process's, so they are handled here and nowhere in the library:
        // SIGTERM/SIGINT are `serve`'s shutdown, SIGHUP re-reads files and reopens file sinks.
        let stop = stop_signal();
        let mut hup = signal(SignalKind::hangup()).ok();
        let bound = run::bind(prepared).await?;
        let hangup = bound.hangup();
        tokio::spawn(async move {
            while let Some(()) = match hup.as_mut() {
                Some(h) => h.recv().await,
                None => None,
            } {
                hangup.trigger();
            }
        });
        run::serve(bound, stop).await
    });
    // The last events (proxy.stopping, ...) may still be queued for stdout.
    mesh_runtime::output::flush_all(EXIT_FLUSH);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(start_code(&e), e),
    }
}

/// `run`'s exit code for an error: 1 for an invalid `sidecar.toml`, 3 for a sidecar that
/// could not start (no usable certificate or policy, a port in use).
fn start_code(e: &RunError) -> u8 {
    match e {
        RunError::Plan(_) => 1,
        _ => 3,
    }
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed at once (the caller is
/// inside the runtime), not when the future is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    let next = |s: Option<Signal>| async move {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    async move {
        tokio::select! {
            () = next(term) => {}
            () = next(int) => {}
        }
    }
}

/// `check` is `run`'s [`run::prepare`] and printing: whatever `run` would refuse before
/// binding, `check` refuses, with the same message.
fn check(config: PathBuf) -> ExitCode {
    let prepared = match run::prepare(&config) {
        Ok(p) => p,
        Err(e) => return fail(1, e),
    };
    for warning in prepared.exposed_secrets() {
        out!("{warning}");
    }
    let plan = prepared.plan();
    match (&plan.identity, prepared.credential()) {
        (IdentityPlan::Enroll { ca_address, .. }, _) => {
            // Enrolling would spend the token: the files are checked, no more.
            out!("identity  enrollment with the CA at {ca_address} (token file holds a join token)")
        }
        (IdentityPlan::Files(_), Some(cred)) => {
            let left = cred.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
            out!("identity  {} (serial {}, {}s left)", cred.id, cred.serial, left);
        }
        (IdentityPlan::Files(_), None) => {}
    }
    match prepared.policy() {
        Some(p) => out!("policy    {} ok ({p:?})", plan.policy.display()),
        None => out!("policy    {} is missing: this sidecar would deny everything", plan.policy.display()),
    }
    if let Some(i) = &plan.inbound {
        out!("inbound   {} -> app {}", i.listen, i.forward);
    }
    for o in &plan.outbound {
        out!("outbound  {} -> {} ({})", o.listen, o.connect, o.server);
    }
    out!("ok: {} is valid", config.display());
    ExitCode::SUCCESS
}

/// Takes a full SPIFFE ID, or `zone/workload` in the policy's trust domain.
fn parse_id(policy: &Policy, s: &str, flag: &str) -> Result<SpiffeId, String> {
    let full = if s.starts_with("spiffe://") {
        s.to_owned()
    } else {
        match s.split_once('/') {
            Some((zone, workload)) => format!("spiffe://{}/ns/{zone}/sa/{workload}", policy.trust_domain()),
            None => return Err(format!("{flag} {s:?}: give a SPIFFE ID or zone/workload")),
        }
    };
    full.parse().map_err(|e| format!("{flag} {s:?}: {e}"))
}

fn explain(
    path: PathBuf,
    from: &str,
    to: &str,
    method: Option<String>,
    req_path: Option<String>,
) -> ExitCode {
    let policy = match Policy::from_file(&path) {
        Ok(p) => p,
        Err(e) => return fail(2, e),
    };
    let (from, to) = match (parse_id(&policy, from, "--from"), parse_id(&policy, to, "--to")) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(2, e),
    };
    let http = match (&method, &req_path) {
        (Some(m), Some(p)) => Some(HttpAttrs { method: m, path: p }),
        _ => None,
    };
    let decision = policy.decide(&Request { from: &from, to: &to, http });
    out!("{decision}");
    if decision.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
