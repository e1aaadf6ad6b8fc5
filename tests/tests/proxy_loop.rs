//! THREATS.md: "an app calling its own sidecar's ports in a loop is refused". A sidecar whose
//! outbound (or inbound forward) points back at one of its own listeners must refuse each
//! such connection once, with a `loop` event, instead of chaining connections to itself
//! until the connection cap.

use std::time::Duration;

use mesh_tests::proxy::*;

/// A port that was free a moment ago: the config must name the port before the sidecar
/// binds it, which port 0 cannot do.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    l.local_addr().expect("probe address").port()
}

fn loop_events(sc: &Sidecar) -> usize {
    sc.events()
        .iter()
        .filter(|e| field(e, "event") == "upstream.connect_failed" && field(e, "reason") == "loop")
        .count()
}

#[test]
fn an_outbound_pointed_at_its_own_listener_is_refused_once_per_connection() {
    let mesh = Mesh::new();
    let me = mesh.identity("orders", "api");
    let policy = mesh.write_file(
        "policy.toml",
        "trust_domain = \"example.org\"\nzones = [\"orders\"]\n[[allow]]\nfrom = \"orders\"\nto = \"orders\"\n",
    );
    let port = free_port();
    let config = mesh.write_file(
        "loop.toml",
        &format!(
            "policy = \"{}\"\n[identity]\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\
             [[outbound]]\nlisten = \"127.0.0.1:{port}\"\nconnect = \"127.0.0.1:{port}\"\nserver = \"{}\"\n",
            policy.display(),
            me.cert().display(),
            me.key().display(),
            me.bundle().display(),
            mesh.id("orders", "api"),
        ),
    );
    let sc = Sidecar::start("loop", &config);
    let out = sc.outbound[0];
    for round in 1..=2 {
        let mut client = Client::connect(out);
        // The sidecar closes the app's connection: nothing comes back.
        let got =
            client.read_until_closed(Duration::from_secs(10)).expect("the sidecar closes the connection");
        assert!(got.is_empty(), "round {round}: bytes came back through a loop");
        sc.wait_count("loop refusals", round, |e| {
            field(e, "event") == "upstream.connect_failed" && field(e, "reason") == "loop"
        });
    }
    // Had the sidecar connected to itself, every hop would have added an accepted connection
    // and another refusal: exactly one per app connection means no chain.
    assert_eq!(loop_events(&sc), 2, "{}", sc.transcript());
    let accepted = sc.events().iter().filter(|e| field(e, "direction") == "outbound").count();
    assert_eq!(accepted, 2, "each app connection was handled once\n{}", sc.transcript());
}

#[test]
fn an_inbound_forwarding_to_its_own_listener_is_refused() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let web = mesh.identity("frontend", "web");
    let policy = mesh.write_file(
        "policy.toml",
        "trust_domain = \"example.org\"\nzones = [\"frontend\", \"orders\"]\n[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\n",
    );
    let port = free_port();
    let config = mesh.write_file(
        "self-forward.toml",
        &format!(
            "policy = \"{}\"\n[identity]\ncert = \"{}\"\nkey = \"{}\"\nbundle = \"{}\"\n\
             [inbound]\nlisten = \"127.0.0.1:{port}\"\nforward = \"127.0.0.1:{port}\"\n",
            policy.display(),
            api.cert().display(),
            api.key().display(),
            api.bundle().display(),
        ),
    );
    let server = Sidecar::start("self-forward", &config);
    let client = mesh.sidecar(
        SidecarSpec::new("web", &web, &policy)
            .outbound(server.inbound.expect("inbound"), &mesh.id("orders", "api")),
    );
    let mut c = Client::connect(client.outbound[0]);
    let got = c.read_until_closed(Duration::from_secs(10)).expect("the connection is closed");
    assert!(got.is_empty());
    server.wait_for("a loop refusal", |e| {
        field(e, "event") == "upstream.connect_failed" && field(e, "reason") == "loop"
    });
    assert_eq!(loop_events(&server), 1, "{}", server.transcript());
}
