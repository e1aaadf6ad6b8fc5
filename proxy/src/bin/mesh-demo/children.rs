//! The demo's long-running child processes (`mesh-ca serve`, the sidecars): started in one
//! process group of their own, and stopped together, whichever way the demo ends.
//!
//! - [`Group`] is the owner's guard: dropping it (the demo finished, returned an error, or
//!   unwound from a panic) stops every child and reaps it.
//! - [`Children::watch`] runs a thread that stops them on SIGTERM or SIGINT, and reports a
//!   child that exits on its own; either way it ends the demo.
//! - A panic hook stops them too, so a release build (`panic = "abort"`, no unwinding, no
//!   drops) leaves nothing behind either.
//!
//! Stopping sends SIGTERM to the whole group (a grandchild goes too), waits up to
//! [`GRACE`] for the children to exit (the sidecars drain), then sends SIGKILL. A `kill -9`
//! of the demo itself cannot be caught: the group id printed in `--keep` mode stops them.
//! Short commands (`mesh-ca init`, `token create`) are not registered: they run to completion
//! in the foreground.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, Pid, Signal};

/// How long the children have to exit after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);
/// How often the watcher looks for a child that exited on its own.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How much of a dead child's stderr log is quoted.
const LAST_WORDS: usize = 600;

/// A started child: its name in messages, and where its stderr goes.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it ended, once reaped.
    status: Option<ExitStatus>,
}

#[derive(Default)]
struct State {
    /// The process group every child joins: the first child's pid.
    group: Option<Pid>,
    procs: Vec<Proc>,
    /// Set once stopping began: no new child starts, and exits are expected, not reported.
    stopping: bool,
    /// A child's own exit has been reported (once).
    reported: bool,
    /// A directory to remove when the demo ends from here (its own temporary one).
    remove: Option<PathBuf>,
}

/// The registry of children, shared by the demo, the watcher thread and the panic hook.
#[derive(Clone, Default)]
pub struct Children(Arc<Mutex<State>>);

/// Stops every child when dropped.
pub struct Group(pub Children);

impl Drop for Group {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Children {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves the list itself intact: stop anyway.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes `dir` (the demo's temporary directory) when a signal or a dead child ends the demo.
    pub fn remove_on_exit(&self, dir: &Path) {
        self.lock().remove = Some(dir.to_owned());
    }

    /// The process group's id, once a child runs.
    pub fn group_id(&self) -> Option<i32> {
        self.lock().group.map(Pid::as_raw_nonzero).map(|p| p.get())
    }

    /// Starts `cmd` as a child named `name` in the demo's process group, stdin closed and
    /// stderr appended to `log`.
    pub fn spawn(&self, name: &str, cmd: &mut Command, log: &Path) -> Result<u32, String> {
        let mut state = self.lock();
        if state.stopping {
            return Err("the demo is stopping".into());
        }
        let err = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        // 0: the first child leads a new group; the others join it.
        let group = state.group.map_or(0, |g| g.as_raw_nonzero().get());
        std::os::unix::process::CommandExt::process_group(cmd, group);
        let child =
            cmd.stdin(Stdio::null()).stderr(err).spawn().map_err(|e| format!("starting {name}: {e}"))?;
        let pid = child.id();
        if state.group.is_none() {
            state.group = i32::try_from(pid).ok().and_then(Pid::from_raw);
        }
        state.procs.push(Proc { name: name.to_owned(), child, log: log.to_owned(), status: None });
        Ok(pid)
    }

    /// If a child has exited on its own (and that was not reported yet), what to tell: its
    /// name, how it ended and the end of its stderr log. `None` while stopping.
    pub fn died(&self) -> Option<String> {
        let mut state = self.lock();
        if state.stopping || state.reported {
            return None;
        }
        let proc = state.procs.iter_mut().find_map(|p| match p.child.try_wait() {
            Ok(Some(status)) => {
                p.status = Some(status);
                Some(p)
            }
            _ => None,
        })?;
        let mut msg = format!(
            "{} exited on its own ({})",
            proc.name,
            proc.status.map_or_else(String::new, |s| s.to_string())
        );
        let log = fs::read_to_string(&proc.log).unwrap_or_default();
        let tail = log.trim_end();
        let mut from = tail.len().saturating_sub(LAST_WORDS);
        while !tail.is_char_boundary(from) {
            from += 1;
        }
        let tail = &tail[from..];
        if !tail.is_empty() {
            msg += &format!(": {}", tail.replace('\n', " | "));
        }
        msg += &format!(" (log: {})", proc.log.display());
        state.reported = true;
        Some(msg)
    }

    /// Stops every child: SIGTERM to the group, up to [`GRACE`] to exit, then SIGKILL; each
    /// is reaped. Idempotent; no child starts afterwards.
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        let Some(group) = state.group else { return };
        if state.procs.iter().all(|p| p.status.is_some()) {
            return;
        }
        // ESRCH (everyone already gone) is fine.
        let _ = kill_process_group(group, Signal::TERM);
        let deadline = Instant::now() + GRACE;
        loop {
            for p in state.procs.iter_mut().filter(|p| p.status.is_none()) {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.status = Some(status);
                }
            }
            if state.procs.iter().all(|p| p.status.is_some()) {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Someone ignored SIGTERM (or is still draining): the group's members, grandchildren
        // included, are killed; the pid is still a live group since a member is left.
        let _ = kill_process_group(group, Signal::KILL);
        for p in state.procs.iter_mut().filter(|p| p.status.is_none()) {
            let _ = p.child.kill();
            p.status = p.child.wait().ok();
        }
    }

    /// Stops the children and removes the demo's temporary directory, if any.
    fn stop_and_clean(&self) {
        self.stop();
        if let Some(dir) = self.lock().remove.take() {
            if fs::remove_dir_all(&dir).is_ok() {
                println!("Removed {}.", dir.display());
            }
        }
    }

    /// Stops the children if the demo panics, before the panic message (and, in a release
    /// build, the abort). `try_lock`: a panic inside [`Children::spawn`] must not deadlock.
    pub fn stop_on_panic(&self) {
        let me = self.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if me.0.try_lock().is_ok() {
                me.stop();
            }
            previous(info);
        }));
    }

    /// Registers for SIGTERM and SIGINT now (before any child starts, so none can be missed)
    /// and starts the thread that waits for them and for a child's own exit. Either ends the
    /// process: 143 or 130 after a signal (128 + its number), 1 after a death.
    pub fn watch(&self) -> Result<(), String> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("signal runtime: {e}"))?;
        let (mut term, mut int) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
            })
            .map_err(|e| format!("signal handlers: {e}"))?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("demo-watch".into())
            .spawn(move || {
                let code = rt.block_on(async {
                    let mut tick = tokio::time::interval(WATCH_EVERY);
                    loop {
                        tokio::select! {
                            _ = term.recv() => break 143,
                            _ = int.recv() => break 130,
                            _ = tick.tick() => {
                                if let Some(msg) = me.died() {
                                    eprintln!("mesh-demo: error: {msg}; stopping the demo");
                                    break 1;
                                }
                            }
                        }
                    }
                });
                if code != 1 {
                    println!("\nStopping the mesh ...");
                }
                me.stop_and_clean();
                std::process::exit(code);
            })
            .map_err(|e| format!("watch thread: {e}"))?;
        Ok(())
    }
}
