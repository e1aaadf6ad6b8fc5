//! One sample policy, examples/policy.toml: the README shows it verbatim, the demo runs it
//! (`include_str!`), and the tests use it. These checks keep the README's copy from drifting,
//! and prove the file means what the README says, with the real `mesh-proxy explain`.

use mesh_tests::proxy::mesh_proxy;
use mesh_tests::workspace_root;

fn sample() -> (std::path::PathBuf, String) {
    let path = workspace_root().join("examples").join("policy.toml");
    let text = std::fs::read_to_string(&path).expect("examples/policy.toml is readable");
    (path, text)
}

#[test]
fn the_readme_shows_the_sample_policy_verbatim() {
    let (_, text) = sample();
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme.split("### policy.toml").nth(1).expect("README has a policy.toml section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section opens with a toml block");
    assert_eq!(block, text, "README's policy.toml block differs from examples/policy.toml");
}

#[test]
fn the_sample_policy_decides_as_documented() {
    let (path, _) = sample();
    let p = path.display().to_string();
    // (from, to, allowed): the two allow rules, the deny rule beating an allow, and the
    // default deny, both directions.
    for (from, to, allowed) in [
        ("frontend/web", "orders/api", true),
        ("orders/api", "payments/charge", true),
        ("frontend/rogue", "orders/api", false),
        ("frontend/web", "payments/charge", false),
        ("orders/api", "frontend/web", false),
        ("orders/other", "payments/charge", false),
    ] {
        let o = mesh_proxy(&["explain", "--policy", &p, "--from", from, "--to", to]);
        let want = if allowed { 0 } else { 1 };
        assert_eq!(
            o.code(),
            Some(want),
            "{from} -> {to} should be {}:\n{o}",
            if allowed { "allowed" } else { "denied" }
        );
    }
}
