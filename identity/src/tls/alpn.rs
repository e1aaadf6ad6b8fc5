//! Which application protocol a TLS connection carries, named by ALPN (RFC 7301).
//!
//! Sidecars speak their byte stream as [`Protocol::MeshTcp`] (`zt-mesh/tcp1`). A sidecar's
//! server accepts a client that offers it, and a client that offers no ALPN at all (sidecars
//! built before ALPN was set), as that mode; a client offering only protocols it does not
//! know is refused in the handshake with a `no_application_protocol` alert (reason
//! `unknown_alpn`). A client offers the mesh protocol and accepts a server that picks it or
//! picks none (an older sidecar). A multiplexed protocol is added later as another variant,
//! offered before `zt-mesh/tcp1`, so each pair of sidecars negotiates the best both know.
//!
//! The CA API and its client use [`Alpn::none`]: no protocol named, none required.

use std::fmt;

/// An application protocol, by its ALPN name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The sidecars' byte stream (the app's bytes, copied as they come): `zt-mesh/tcp1`.
    MeshTcp,
}

impl Protocol {
    /// Every protocol this build knows, for parsing a negotiated name.
    const ALL: [Protocol; 1] = [Protocol::MeshTcp];

    /// The ALPN protocol name, as on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::MeshTcp => "zt-mesh/tcp1",
        }
    }

    /// The protocol a negotiated ALPN name stands for, if this build knows it.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name().as_bytes() == name)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a config offers (client) or accepts (server) by ALPN, in order of preference. A
/// peer that negotiates no protocol at all speaks the last, least preferred one: the oldest,
/// which sidecars spoke before ALPN was set (so the config itself remembers the mode for
/// "none", and nothing beside it has to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alpn {
    protocols: Vec<Protocol>,
}

impl Alpn {
    /// Between sidecars: `zt-mesh/tcp1`, and a peer that names no protocol speaks it too.
    pub fn mesh() -> Self {
        Self { protocols: vec![Protocol::MeshTcp] }
    }

    /// No ALPN: nothing offered, whatever a client offers is ignored (the CA API and its
    /// client; connections report no protocol).
    pub fn none() -> Self {
        Self { protocols: Vec::new() }
    }

    /// The protocols offered or accepted, most preferred first.
    pub fn protocols(&self) -> &[Protocol] {
        &self.protocols
    }

    /// The names as rustls takes them (`alpn_protocols`).
    pub(super) fn wire(&self) -> Vec<Vec<u8>> {
        self.protocols.iter().map(|p| p.name().as_bytes().to_vec()).collect()
    }
}

/// The mode of a finished handshake on a config with the ALPN list `configured` (rustls's
/// `alpn_protocols`, as [`Alpn::wire`] made it) that negotiated `negotiated` (rustls's
/// `alpn_protocol()`): the protocol agreed, or the list's last for a peer that named none;
/// `None` for a config without ALPN. rustls only ever selects (server) or accepts (client) a
/// protocol of the list, so a name outside it is not a mode: `None`, which the caller refuses.
pub(super) fn mode(configured: &[Vec<u8>], negotiated: Option<&[u8]>) -> Option<Protocol> {
    let name = negotiated.or(configured.last().map(Vec::as_slice))?;
    Protocol::from_name(name).filter(|_| configured.iter().any(|c| c == name))
}
