//! End-to-end tests of the `mesh-proxy` sidecar: real `mesh-proxy run` processes with
//! identities from the real `mesh-ca`, a recording echo app behind them, and clients that are
//! either a plain TCP app (through a client sidecar) or a Python `ssl` peer straight at an
//! inbound port (for what a correct sidecar would never send).
//!
//! Every test proves its feature by an observable outcome that would differ without it:
//! bytes echoed or not, the app's connection count, and the one event per connection each
//! sidecar prints. Waiting is always for an event, a byte or an exit, with a deadline.

use mesh_tests::proxy::*;
use serde_json::Value;

#[path = "proxy_e2e/handshake.rs"]
mod handshake;
#[path = "proxy_e2e/reload.rs"]
mod reload;
#[path = "proxy_e2e/shutdown.rs"]
mod shutdown;
#[path = "proxy_e2e/traffic.rs"]
mod traffic;

/// Asserts string fields of an event, with the sidecar's transcript on failure.
#[track_caller]
fn assert_fields(sc: &Sidecar, e: &Value, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(field(e, k), *v, "field {k} of {e}\n{}", sc.transcript());
    }
}
