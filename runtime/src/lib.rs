//! mesh-runtime: what both zt-mesh binaries (the sidecar and the CA server) run on, so that
//! neither grows its own: [`output`], stdout and stderr lines that can neither block nor crash
//! a process; [`limits`], per-source connection and rate budgets for listeners; [`serve`], the
//! one accept loop (budgets, backoff, tracked tasks, the drain) every listener runs;
//! [`http`], the one HTTP/1.1 connection builder with its limits; [`events`], the typed
//! security events and their bounded, non-blocking sinks; and [`diagnostics`], `tracing`
//! for the servers' messages, written through `output`; [`exposition`], the `process_*`
//! metrics and the stable order both `/metrics` endpoints render.

pub mod diagnostics;
pub mod events;
pub mod exposition;
pub mod http;
pub mod limits;
pub mod output;
pub mod serve;
