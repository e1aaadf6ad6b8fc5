//! Hot reload: the policy and the credential files are polled for changes (and re-read at
//! once on a [`Hangup`], which `main` triggers on SIGHUP). A new version is validated fully,
//! then swapped atomically on its `watch`; a broken one is refused with an event and the last
//! good one stays. Live connections keep the certificate they were accepted with; new
//! handshakes use the new one. A new policy reaches live connections too: each one's stop
//! signal (`stop::watch`) decides it again and closes it if the new policy denies it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_config::policy::Policy;
use mesh_config::SpiffeId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::credentials::Credential;
use crate::events::{Event, EventKind, Events, Severity};
use crate::state::Tls;
use crate::tls::{NothingRevoked, Resumption};

/// How often files are checked. Rotation tools rename files into place, so a change is seen
/// within this interval; SIGHUP skips the wait.
const POLL: Duration = Duration::from_secs(1);

/// The files a sidecar follows: always the policy; the credential files in files mode.
#[derive(Debug, Clone)]
pub struct Watched {
    pub policy: PathBuf,
    pub credential: Option<CredFiles>,
}

/// Certificate chain, key and bundle, as `mesh-ca issue` writes them.
#[derive(Debug, Clone)]
pub struct CredFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// What to rebuild the TLS configs for.
#[derive(Debug, Clone)]
pub struct TlsShape {
    pub inbound: bool,
    pub servers: Vec<SpiffeId>,
    /// `[tls] resumption`.
    pub resumption: Resumption,
}

impl TlsShape {
    /// The shape of a sidecar's plan: its inbound, its outbounds' server identities, resumption.
    pub fn of(plan: &crate::plan::Plan) -> Self {
        Self {
            inbound: plan.inbound.is_some(),
            servers: plan.outbound.iter().map(|o| o.server.clone()).collect(),
            resumption: plan.resumption,
        }
    }
}

/// A request to re-read every followed file now and to reopen file sinks: what SIGHUP asks
/// for. `main` owns the signal and calls [`Hangup::trigger`]; the reloader waits on it. A
/// trigger while the reloader is busy is kept (one, not counted) and served next.
#[derive(Debug, Clone, Default)]
pub struct Hangup(Arc<tokio::sync::Notify>);

impl Hangup {
    pub fn trigger(&self) {
        self.0.notify_one();
    }

    async fn wait(&self) {
        self.0.notified().await;
    }
}

/// Identity of a file's current version: (inode, size, mtime ns); `None` if missing.
type Fingerprint = Option<(u64, u64, i128)>;

fn fingerprint(p: &Path) -> Fingerprint {
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.size(), m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128))
}

/// Loads the policy file: missing means deny everything (fail closed), broken is an error.
/// A policy for another trust domain than the sidecar's identity is refused too.
pub fn load_policy(path: &Path, own: &SpiffeId) -> Result<(Policy, bool), String> {
    if !path.exists() {
        return Ok((Policy::deny_all(own.trust_domain().clone()), true));
    }
    let p = Policy::from_file(path).map_err(|e| e.to_string())?;
    if p.trust_domain() != own.trust_domain() {
        return Err(format!(
            "{}: trust_domain {} does not match this sidecar's identity {own}",
            path.display(),
            p.trust_domain()
        ));
    }
    Ok((p, false))
}

pub async fn run(
    files: Watched,
    shape: TlsShape,
    tls_tx: watch::Sender<Arc<Tls>>,
    policy_tx: watch::Sender<Arc<Policy>>,
    events: Events,
    hangup: Hangup,
    shutdown: CancellationToken,
) {
    let cred_fp = |f: &Watched| {
        f.credential.as_ref().map(|c| [fingerprint(&c.cert), fingerprint(&c.key), fingerprint(&c.bundle)])
    };
    let mut policy_seen = fingerprint(&files.policy);
    let mut cred_seen = cred_fp(&files);
    let mut tick = tokio::time::interval(POLL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = hangup.wait() => true,
            _ = shutdown.cancelled() => return,
        };
        if forced {
            // logrotate's SIGHUP: file sinks start a new file at their path.
            events.reopen();
        }
        let now = cred_fp(&files);
        if let (true, Some(creds)) = (forced || now != cred_seen, &files.credential) {
            cred_seen = now;
            let (creds, shape) = (creds.clone(), shape.clone());
            let built = blocking(move || build_credential(&creds, &shape)).await;
            publish_credential(built, &tls_tx, &events);
        }
        let now = fingerprint(&files.policy);
        if forced || now != policy_seen {
            policy_seen = now;
            let own = tls_tx.borrow().cred.id.clone();
            let path = files.policy.clone();
            match blocking(move || load_policy(&path, &own)).await {
                Ok((p, missing)) => {
                    let e = if missing {
                        Event::new(EventKind::PolicyReloaded, Severity::Warning)
                            .detail(format!("{} is missing: denying everything", files.policy.display()))
                    } else {
                        Event::new(EventKind::PolicyReloaded, Severity::Info)
                            .detail(files.policy.display().to_string())
                    };
                    policy_tx.send_replace(Arc::new(p));
                    events.emit(e);
                }
                Err(err) => events.emit(
                    Event::new(EventKind::PolicyReloadFailed, Severity::Error)
                        .reason("invalid_policy", err)
                        .detail("kept the last good policy"),
                ),
            }
        }
    }
}

/// Runs a file load on tokio's blocking pool. Parsing a 10,000-rule policy takes 40-200 ms
/// (benches: `policy/load`); on the async worker that would stall every connection of a
/// one-worker sidecar meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(format!("the loading task failed: {e}")))
}

fn build_credential(files: &CredFiles, shape: &TlsShape) -> Result<Tls, String> {
    Credential::load(&files.cert, &files.key, &files.bundle)
        .map_err(|e| e.to_string())
        .and_then(|c| Tls::build(c, shape, Arc::new(NothingRevoked)).map_err(|e| e.to_string()))
}

fn publish_credential(built: Result<Tls, String>, tls_tx: &watch::Sender<Arc<Tls>>, events: &Events) {
    match built {
        Ok(tls) => {
            let mut e = Event::new(EventKind::CertRotated, Severity::Info).detail(format!(
                "serial {} valid until {}",
                tls.cred.serial,
                time::OffsetDateTime::from_unix_timestamp(tls.cred.not_after)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            ));
            e = e.src_id(tls.cred.id.to_string());
            tls_tx.send_replace(Arc::new(tls));
            events.emit(e);
        }
        Err(err) => events.emit(
            Event::new(EventKind::CertReloadFailed, Severity::Error)
                .reason("invalid_credential", err)
                .detail("kept the last good certificate"),
        ),
    }
}
