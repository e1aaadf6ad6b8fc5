//! Diagnostics: what a server says to its operator about itself (it is serving, a sink is
//! failing, a warning about its configuration), as `tracing` events. Security events are not
//! diagnostics: they go through [`crate::events`].
//!
//! [`init`] installs one subscriber per process: an env filter (`MESH_LOG`, else `RUST_LOG`,
//! else `info`; e.g. `MESH_LOG=debug`, `MESH_LOG=mesh_proxy=debug,info`) and a formatter that
//! writes each message as one plain line, `<program>: <message>` (`error: ` / `debug: ` /
//! `trace: ` before the message at those levels), through [`crate::output::stderr`]: a closed
//! or stalled stderr loses lines (counted) and never stops or stalls the process. Messages
//! logged before `init`, or in a process that never calls it (the CLI's one-shot commands),
//! go nowhere.

use std::fmt;
use std::io;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The filter variables, first found wins.
const FILTER_VARS: [&str; 2] = ["MESH_LOG", "RUST_LOG"];
const DEFAULT_FILTER: &str = "info";

/// Installs the process's diagnostics subscriber (once; later calls, or a subscriber already
/// installed, leave things as they are). An unusable filter falls back to `info`, and says so.
pub fn init() {
    let (filter, bad) = filter(|name| std::env::var(name).ok());
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(Plain { program: crate::output::program() })
        .with_writer(Stderr)
        .try_init()
        .is_ok();
    if let (true, Some((var, e))) = (installed, bad) {
        tracing::warn!("{var}: {e}; using {DEFAULT_FILTER}");
    }
}

/// The filter from the first variable set, or the default; and the variable that was set but
/// could not be parsed, with why.
fn filter(get: impl Fn(&str) -> Option<String>) -> (EnvFilter, Option<(&'static str, String)>) {
    for var in FILTER_VARS {
        if let Some(spec) = get(var).filter(|s| !s.trim().is_empty()) {
            return match EnvFilter::try_new(&spec) {
                Ok(f) => (f, None),
                Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some((var, e.to_string()))),
            };
        }
    }
    (EnvFilter::new(DEFAULT_FILTER), None)
}

/// `<program>: [level: ]<message> [field=value ...]`, one line.
struct Plain {
    program: String,
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}: {}", self.program, prefix(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// What a line says before its message: nothing for info and warnings (their text says what
/// they are, as it always has), the level for the others.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error: ",
        Level::WARN | Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
    }
}

/// Hands each formatted message (the formatter writes one whole line per call) to the
/// output thread.
#[derive(Clone, Copy)]
struct Stderr;

impl io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Dropped lines are counted by the writer; a diagnostic never fails its caller.
        crate::output::stderr().lines(buf.to_vec(), 1);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn mesh_log_wins_and_a_bad_filter_falls_back() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        let (f, bad) = filter(env(&[("MESH_LOG", "debug"), ("RUST_LOG", "error")]));
        assert!(bad.is_none());
        assert_eq!(f.to_string(), "debug");
        let (f, _) = filter(env(&[("RUST_LOG", "warn")]));
        assert_eq!(f.to_string(), "warn");
        let (f, _) = filter(env(&[]));
        assert_eq!(f.to_string(), "info");
        let (f, bad) = filter(env(&[("MESH_LOG", "=[")]));
        assert_eq!((f.to_string().as_str(), bad.map(|b| b.0)), ("info", Some("MESH_LOG")));
    }

    #[test]
    fn lines_are_the_program_then_the_message() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("buf").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .event_format(Plain { program: "mesh-proxy".into() })
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("spiffe://example.org/ns/a/sa/b serving inbound=127.0.0.1:1");
            tracing::warn!("WARNING: the admin listener is not on loopback");
            tracing::error!(sink = "file", "failed");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        assert_eq!(
            text,
            "mesh-proxy: spiffe://example.org/ns/a/sa/b serving inbound=127.0.0.1:1\n\
             mesh-proxy: WARNING: the admin listener is not on loopback\n\
             mesh-proxy: error: failed sink=\"file\"\n"
        );
    }
}
