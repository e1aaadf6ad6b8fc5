//! `mesh-ca --version` and `mesh-ca completions SHELL`.

use mesh_tests::*;

#[test]
fn version_is_the_crate_version() {
    let out = Cmd::mesh_ca().arg("--version").run();
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("mesh-ca {}", env!("CARGO_PKG_VERSION")), "{out}");
}

/// The bash script parses (`bash -n`), and sourcing it registers a completion for mesh-ca
/// that knows the subcommands.
#[test]
fn bash_completions_parse_and_register() {
    let out = Cmd::mesh_ca().args(["completions", "bash"]).run();
    out.assert_ok();
    for word in ["init", "issue", "serve", "revoke", "completions", "--trust-domain"] {
        assert!(out.stdout.contains(word), "the bash completions do not offer {word}:\n{out}");
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let script = tmp.path().join("mesh-ca.bash");
    std::fs::write(&script, &out.stdout).expect("writing the script");
    Cmd::new("bash").arg("-n").arg(&script).run().assert_ok();
    let loaded = Cmd::new("bash").args(["-c", "source \"$0\" && complete -p mesh-ca"]).arg(&script).run();
    loaded.assert_ok();
    assert!(loaded.stdout.contains("mesh-ca"), "{loaded}");
}

#[test]
fn zsh_and_fish_completions_name_the_subcommands() {
    for shell in ["zsh", "fish"] {
        let out = Cmd::mesh_ca().args(["completions", shell]).run();
        out.assert_ok();
        assert!(out.stdout.contains("mesh-ca") && out.stdout.contains("revoke"), "{shell}:\n{out}");
    }
    let bad = Cmd::mesh_ca().args(["completions", "tcsh"]).run();
    assert_eq!(bad.code(), Some(2), "{bad}");
}
