//! A throwaway CA made by the real `mesh-ca init`, and what `mesh-ca issue` prints.

use std::path::PathBuf;

use crate::process::{Cmd, Output};
use crate::{PASSPHRASE, TRUST_DOMAIN};

/// A CA created by `mesh-ca init` in a fresh temporary directory.
pub struct TestCa {
    /// Owns the temporary directory; everything below lives in it.
    pub tmp: tempfile::TempDir,
    /// The CA directory (`--dir`).
    pub dir: PathBuf,
    /// A file holding [`PASSPHRASE`] (`--passphrase-file`), or None for an unencrypted CA.
    pub pass_file: Option<PathBuf>,
    pub trust_domain: String,
}

impl TestCa {
    /// `mesh-ca init` with a passphrase file and any extra flags; panics unless it succeeds.
    pub fn init(extra: &[&str]) -> Self {
        let ca = Self::prepare(true);
        ca.cmd("init").arg("--trust-domain").arg(&ca.trust_domain).args(extra).run().assert_ok();
        ca
    }

    /// `mesh-ca init --insecure-no-passphrase` (cheap keys, for tests issuing many leaves).
    pub fn init_unencrypted() -> Self {
        let ca = Self::prepare(false);
        ca.cmd("init")
            .args(["--trust-domain", &ca.trust_domain, "--insecure-no-passphrase"])
            .run()
            .assert_ok();
        ca
    }

    /// A temporary directory with a passphrase file but no CA yet (dir not created).
    pub fn prepare(with_pass: bool) -> Self {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("ca");
        let pass_file = with_pass.then(|| {
            let p = tmp.path().join("passphrase");
            std::fs::write(&p, format!("{PASSPHRASE}\n")).expect("writing the passphrase file");
            // A secret file: private, as an operator's would be (mesh-ca warns otherwise).
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .expect("making the passphrase file private");
            p
        });
        Self { tmp, dir, pass_file, trust_domain: TRUST_DOMAIN.to_owned() }
    }

    /// `mesh-ca <sub> --dir DIR [--passphrase-file F]` (list and bundle take no passphrase).
    pub fn cmd(&self, sub: &str) -> Cmd {
        let mut c = Cmd::mesh_ca().arg(sub).arg("--dir").arg(&self.dir);
        if let (Some(p), true) = (&self.pass_file, matches!(sub, "init" | "issue")) {
            c = c.arg("--passphrase-file").arg(p);
        }
        c
    }

    /// A path under the temporary directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `mesh-ca issue` into `<tmp>/<out>`; returns the process output.
    pub fn issue(&self, zone: &str, workload: &str, out: &str, extra: &[&str]) -> Output {
        self.cmd("issue")
            .args(["--zone", zone, "--workload", workload, "--out"])
            .arg(self.path(out))
            .args(extra)
            .run()
    }

    /// Issues and panics unless it worked; returns the output directory and the serial
    /// printed on stdout.
    pub fn issue_ok(&self, zone: &str, workload: &str, out: &str, extra: &[&str]) -> (PathBuf, String) {
        let o = self.issue(zone, workload, out, extra);
        o.assert_ok();
        let id = format!("spiffe://{}/ns/{zone}/sa/{workload}", self.trust_domain);
        assert!(o.stdout.contains(&id), "issue does not print the SPIFFE ID {id}:\n{o}");
        let serial = serial_from_issue_stdout(&o.stdout)
            .unwrap_or_else(|| panic!("issue prints no lowercase hex serial of >= 64 bits:\n{o}"));
        (self.path(out), serial)
    }
}

/// The serial number `mesh-ca issue` prints: the longest run of lowercase hex digits of at
/// least 16 characters on the line with the SPIFFE ID (a run of 16+ hex digits cannot be a
/// word, a date or a path component of a temp dir, which are shorter or not pure hex).
pub fn serial_from_issue_stdout(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.contains("spiffe://"))?;
    line.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 16 && w.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()))
        .max_by_key(|w| w.len())
        .map(str::to_owned)
}

/// The number of significant bits of a hex serial (leading zeros ignored).
pub fn serial_bits(hex: &str) -> usize {
    let t = hex.trim_start_matches('0');
    match t.chars().next().and_then(|c| c.to_digit(16)) {
        None => 0,
        Some(d) => (t.len() - 1) * 4 + (32 - d.leading_zeros() as usize),
    }
}
