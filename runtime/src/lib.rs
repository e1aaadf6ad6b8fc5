//! mesh-runtime: what both zt-mesh binaries (the sidecar and the CA server) run on, so that
//! neither grows its own: [`output`], stdout and stderr lines that can neither block nor crash
//! a process, and [`limits`], per-source connection and rate budgets for listeners.

pub mod limits;
pub mod output;
