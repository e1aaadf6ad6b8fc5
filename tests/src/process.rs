//! Finding the workspace binaries and running processes with a deadline, collecting what
//! they print. No test logic here.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::PASSPHRASE_ENV;

/// A process that runs longer than this is killed and the test fails: nothing the CLI does
/// should take minutes, and a hung test must not hang CI.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

static BUILD: Once = Once::new();

/// `target/<profile>`: the directory holding this test executable's `deps` directory.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut dir = exe.parent().expect("the test executable lives in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary; `mesh-ca` is built (once per test process) when missing.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() && name == "mesh-ca" {
        BUILD.call_once(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            // Into the same target dir this test runs from (CARGO_TARGET_DIR may differ).
            let target_root = target_dir().parent().map(Path::to_path_buf).unwrap_or_else(target_dir);
            let status = Command::new(cargo)
                .args(["build", "--bins", "-p", "mesh-ca", "--target-dir"])
                .arg(target_root)
                .current_dir(workspace_root())
                .status()
                .expect("cargo can be started to build mesh-ca");
            assert!(status.success(), "cargo build --bins -p mesh-ca failed");
        });
    }
    assert!(path.exists(), "{} is missing; run `cargo build --bins`", path.display());
    path
}

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives inside the workspace").to_path_buf()
}

/// `tests/py/<name>`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// What a finished process said.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub cmdline: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole transcript unless the process exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "expected success:\n{self}");
        self
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }

    /// Panics unless the process failed cleanly: a non-zero exit code (not a signal), no
    /// panic, and a first stderr line that names one of `needles` (a flag, file or value;
    /// compared case-insensitively). That the error is *only* one line is checked once, for
    /// every kind of error, by `every_error_is_one_line_on_stderr`.
    #[track_caller]
    pub fn assert_error_naming(&self, needles: &[&str]) -> &Self {
        if let Some(problem) = self.error_naming_problem(needles) {
            panic!("{problem}");
        }
        self
    }

    /// What [`Output::assert_error_naming`] would complain about, if anything.
    pub fn error_naming_problem(&self, needles: &[&str]) -> Option<String> {
        if !matches!(self.code(), Some(c) if c != 0) {
            return Some(format!("expected a non-zero exit code:\n{self}"));
        }
        if self.stderr.contains("panicked") {
            return Some(format!("the process panicked:\n{self}"));
        }
        let first = self.stderr_lines().first().map(|l| l.to_lowercase()).unwrap_or_default();
        if !needles.iter().any(|n| first.contains(&n.to_lowercase())) {
            return Some(format!("the error line names none of {needles:?}:\n{self}"));
        }
        None
    }

    /// Whether stderr holds exactly one non-empty line.
    pub fn one_line_error(&self) -> bool {
        self.stderr_lines().len() == 1
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A command under construction. stdin is closed, the environment is inherited except for
/// the mesh-ca passphrase variable, which a test must set explicitly to have it.
pub struct Cmd {
    cmd: Command,
    cmdline: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.env_remove(PASSPHRASE_ENV).stdin(Stdio::null());
        Self { cmd, cmdline: program.to_string_lossy().into_owned() }
    }

    /// The mesh-ca binary.
    pub fn mesh_ca() -> Self {
        Self::new(binary("mesh-ca"))
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.cmdline.push(' ');
        self.cmdline.push_str(&a.as_ref().to_string_lossy());
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs to completion (killing it after [`PROCESS_TIMEOUT`]) and collects its output.
    pub fn run(mut self) -> Output {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.cmdline));
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send((true, buf));
        });
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = tx2.send((false, buf));
        });
        // Both pipes reaching EOF means the process has exited (or closed them); the
        // deadline bounds a hung process without any sleeping.
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let (mut stdout, mut stderr) = (None, None);
        while stdout.is_none() || stderr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, b)) => stdout = Some(b),
                Ok((false, b)) => stderr = Some(b),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not finish within {PROCESS_TIMEOUT:?}; killed", self.cmdline);
                }
            }
        }
        let status = child.wait().expect("waiting for a child we started");
        Output {
            status,
            stdout: String::from_utf8_lossy(&stdout.unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.unwrap_or_default()).into_owned(),
            cmdline: self.cmdline,
        }
    }
}
