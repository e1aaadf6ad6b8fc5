//! `mesh-proxy`: the sidecar's command line. Thin: parse flags, call the library, map errors
//! to exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_config::policy::{HttpAttrs, Policy, Request};
use mesh_config::SpiffeId;
use mesh_proxy::credentials::Credential;
use mesh_proxy::plan::{self, IdentityPlan};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Explain { policy, from, to, method, path } => explain(policy, &from, &to, method, path),
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

fn run(config: PathBuf) -> ExitCode {
    let plan = match plan::load(&config) {
        Ok(p) => p,
        Err(e) => return fail(1, e),
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
    let ran = rt.block_on(mesh_proxy::run::run(plan));
    // The last events (proxy.stopping, ...) may still be queued for stdout.
    mesh_runtime::output::flush_all(EXIT_FLUSH);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(3, e),
    }
}

fn check(config: PathBuf) -> ExitCode {
    let plan = match plan::load(&config) {
        Ok(p) => p,
        Err(e) => return fail(1, e),
    };
    for warning in plan.identity.exposed_secrets() {
        out!("{warning}");
    }
    let own = match &plan.identity {
        IdentityPlan::Files(f) => {
            let cred = match Credential::load(&f.cert, &f.key, &f.bundle) {
                Ok(c) => c,
                Err(e) => return fail(1, e),
            };
            let left = cred.not_after - time::OffsetDateTime::now_utc().unix_timestamp();
            out!("identity  {} (serial {}, {}s left)", cred.id, cred.serial, left);
            // The TLS configs `run` builds: a bundle without an anchor for an outbound's
            // trust domain fails here, as it would there.
            let id = cred.id.clone();
            if let Err(e) = mesh_proxy::state::Tls::build(
                cred,
                &mesh_proxy::reload::TlsShape::of(&plan),
                std::sync::Arc::new(mesh_identity::tls::NothingRevoked),
            ) {
                return fail(1, format!("{}: {e}", f.bundle.display()));
            }
            Some(id)
        }
        IdentityPlan::Enroll { ca_address, ca_bundle, token_file } => {
            // Enrolling would spend the token: check that the files are usable, and no more.
            let anchors = match mesh_identity::pem::read_certs(ca_bundle) {
                Ok(a) => a,
                Err(e) => return fail(1, format!("ca_bundle: {e}")),
            };
            let nothing = std::sync::Arc::new(mesh_identity::tls::NothingRevoked);
            if let Err(e) = mesh_identity::client::CaClient::new(ca_address.clone(), anchors, nothing) {
                return fail(1, format!("ca_bundle {}: {e}", ca_bundle.display()));
            }
            match mesh_identity::fsutil::read_bounded(token_file, 4096) {
                Ok(t)
                    if mesh_identity::token::Token::from_presented(&String::from_utf8_lossy(&t))
                        .is_some() => {}
                Ok(_) => {
                    return fail(
                        1,
                        format!("token_file {}: does not hold a join token", token_file.display()),
                    )
                }
                Err(e) => return fail(1, format!("token_file: {e}")),
            }
            out!("identity  enrollment with the CA at {ca_address} (token file readable)");
            None
        }
    };
    match Policy::from_file(&plan.policy) {
        Ok(p) if own.as_ref().is_some_and(|id| id.trust_domain() != p.trust_domain()) => {
            return fail(
                1,
                format!(
                    "{}: trust_domain {} does not match the certificate",
                    plan.policy.display(),
                    p.trust_domain()
                ),
            )
        }
        Ok(p) => out!("policy    {} ok ({p:?})", plan.policy.display()),
        Err(_) if !plan.policy.exists() => {
            out!("policy    {} is missing: this sidecar would deny everything", plan.policy.display())
        }
        Err(e) => return fail(1, e),
    }
    if let Some((listen, fwd)) = &plan.inbound {
        out!("inbound   {listen} -> app {fwd}");
    }
    for (listen, connect, server) in &plan.outbound {
        out!("outbound  {listen} -> {connect} ({server})");
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
