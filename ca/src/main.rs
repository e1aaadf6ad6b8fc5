//! `mesh-ca`: the command line of the zt-mesh certificate authority. Thin: parses flags into
//! typed values, calls the library, prints, and maps errors to exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_ca::authority::{Authority, CaDir, InitOptions, RevokeTarget};
use mesh_ca::fsutil::OutFile;
use mesh_ca::keys::{self, Passphrase};
use mesh_ca::server::ServeOptions;
use mesh_ca::settings::Settings;
use mesh_ca::store::{CertKind, CertStatus};
use mesh_ca::store::{RevocationAction, RevokeOutcome, TokenInfo, TokenRevocation};
use mesh_ca::{bundle, inspect, CaError};
use mesh_config::{SpiffeId, TrustDomain, Ttl, Workload, Zone};
use mesh_identity::pem;
use serde::Serialize;

const PASSPHRASE_ENV: &str = "MESH_CA_PASSPHRASE";
/// How long an exiting process waits for its queued output lines (see `mesh_runtime::output`).
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "mesh-ca",
    version,
    about = "The zt-mesh certificate authority: short-lived SPIFFE workload certificates",
    after_help = "Example (a first certificate in three commands):
  export MESH_CA_PASSPHRASE='a long secret'
  mesh-ca init  --dir ./ca --trust-domain example.org
  mesh-ca issue --dir ./ca --zone payments --workload charge --out ./certs/charge
  mesh-ca inspect ./certs/charge/cert.pem

Exit codes: 0 ok, 1 refused by the CA's rules or a profile violation, 2 bad usage,
3 passphrase missing or wrong, 4 CA directory missing or already initialised,
5 file error, 6 certificate store error, 7 crypto error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a trust domain: root and intermediate CA, settings and certificate store.
    #[command(after_help = "Example:
  MESH_CA_PASSPHRASE='a long secret' mesh-ca init --dir ./ca --trust-domain example.org

Writes into DIR (created with mode 0700): root.pem, intermediate.pem, root.key.pem and
intermediate.key.pem (encrypted PKCS#8, mode 0600), ca.toml (settings) and store.db.
Keys are encrypted with the passphrase (at least 12 characters) from MESH_CA_PASSPHRASE or
--passphrase-file; without one, init refuses unless --insecure-no-passphrase is given.
--root-ttl and --intermediate-ttl are at most 438000h (50 years).")]
    Init(InitArgs),
    /// Issue a workload certificate (X.509-SVID) and its private key into a directory.
    #[command(after_help = "Example:
  mesh-ca issue --dir ./ca --zone payments --workload charge --ttl 1h --out ./certs/charge

Writes OUTDIR/cert.pem (leaf then intermediate), OUTDIR/key.pem (mode 0600) and
OUTDIR/bundle.pem (the trust anchors), all or nothing. The identity is
spiffe://<trust-domain>/ns/<zone>/sa/<workload>.")]
    Issue(IssueArgs),
    /// Print the trust bundle (the root certificates peers must trust).
    #[command(after_help = "Examples:
  mesh-ca bundle --dir ./ca > bundle.pem
  mesh-ca bundle --dir ./ca --format spiffe > bundle.json   # SPIFFE bundle (JWKS)")]
    Bundle(BundleArgs),
    /// Show a certificate's identity and validity, and check the X.509-SVID profile.
    #[command(after_help = "Examples:
  mesh-ca inspect ./certs/charge/cert.pem
  mesh-ca inspect --json ./certs/charge/cert.pem | jq .profile

Works on any PEM or DER certificate, including ones made elsewhere. Exits 1 when the
certificate breaks the profile, and names each broken rule.")]
    Inspect(InspectArgs),
    /// Serve the CA's HTTPS API: enrollment, renewal, bundle and revocations.
    #[command(after_help = "Example:
  MESH_CA_PASSPHRASE='a long secret' mesh-ca serve --dir ./ca --listen 127.0.0.1:8443 --cert-ttl 1h

Prints one JSON event per line on stdout, starting with ca.started (which names the bound
address; --listen 127.0.0.1:0 picks a free port). The server's own identity is
spiffe://<trust-domain>/ns/mesh-system/sa/ca. SIGTERM or Ctrl-C stops it.")]
    Serve(ServeArgs),
    /// Join tokens for enrollment.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke a certificate by serial, or every certificate of an identity.
    #[command(after_help = "Examples:
  mesh-ca revoke --dir ./ca --serial 3f2a...        # one certificate
  mesh-ca revoke --dir ./ca --zone payments --workload charge --reason compromised
  mesh-ca revoke --dir ./ca --from-file incident-42.txt --reason compromised

--from-file takes one target a line: ZONE/WORKLOAD (every certificate of that identity) or a
serial; blank lines and # comments are skipped. All are revoked in one transaction, or none
(a bad line is named and nothing is revoked).

A revoked identity cannot renew, enroll, be issued a certificate or a join token until
`mesh-ca reinstate`. An identity the CA never issued a certificate or a token for is refused
(a typo would otherwise ban a name nobody meant) unless --force is given. Revoking what is
revoked already says \"already revoked (#N)\", changes nothing and exits 0.

Works while `mesh-ca serve` runs on the same directory: sidecars that follow the CA refuse
the revoked peer within seconds.")]
    Revoke(RevokeArgs),
    /// Lift an identity's revocation: it may be issued certificates and join tokens again.
    #[command(after_help = "Example:
  mesh-ca reinstate --dir ./ca --zone payments --workload charge --reason 'revoked by mistake'

The identity's certificates from before stay revoked (each gets a revocation entry of its
own) and its join tokens from before are revoked: the workload needs a new token or a new
certificate. Sidecars following the CA learn of the reinstatement from the revocation log.
An identity that is not revoked is left as it is (exit 0).")]
    Reinstate(ReinstateArgs),
    /// List what the CA's store knows: every certificate issued and its status.
    #[command(after_help = "Examples:
  mesh-ca list --dir ./ca
  mesh-ca list --dir ./ca --json")]
    List(ListArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    #[command(after_help = "Examples:
  mesh-ca completions bash > /etc/bash_completion.d/mesh-ca
  mesh-ca completions zsh > \"${fpath[1]}/_mesh-ca\"
  mesh-ca completions fish > ~/.config/fish/completions/mesh-ca.fish")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct PassArgs {
    /// File holding the CA key passphrase (first line). Default: $MESH_CA_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
struct InitArgs {
    /// Directory to create the CA in (new or empty).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The SPIFFE trust domain, e.g. example.org.
    #[arg(long, value_name = "TD")]
    trust_domain: TrustDomain,
    #[command(flatten)]
    pass: PassArgs,
    /// Write the CA keys unencrypted. Only for throwaway test CAs.
    #[arg(long)]
    insecure_no_passphrase: bool,
    /// Lifetime of the root CA certificate.
    #[arg(long, default_value = "87600h", value_name = "TTL", value_parser = ca_ttl)]
    root_ttl: Ttl,
    /// Lifetime of the intermediate (issuing) CA certificate.
    #[arg(long, default_value = "8760h", value_name = "TTL", value_parser = ca_ttl)]
    intermediate_ttl: Ttl,
    /// Shortest leaf TTL this CA issues (not below 1m).
    #[arg(long, default_value = "1m", value_name = "TTL")]
    min_leaf_ttl: Ttl,
    /// Longest leaf TTL this CA issues (not above 24h).
    #[arg(long, default_value = "24h", value_name = "TTL")]
    max_leaf_ttl: Ttl,
    /// Leaf TTL when `issue` is not given --ttl.
    #[arg(long, default_value = "1h", value_name = "TTL")]
    default_leaf_ttl: Ttl,
    /// Longest lifetime `token create` may give a join token (at most 720h, 30 days).
    #[arg(long, default_value = "720h", value_name = "TTL", value_parser = token_ttl)]
    max_token_ttl: Ttl,
    /// Most enrollments `token create` may give one join token (1 to 1000).
    #[arg(long, default_value_t = mesh_identity::token::MAX_TOKEN_USES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=mesh_identity::token::MAX_TOKEN_USES as i64))]
    max_token_uses: u32,
}

#[derive(Args)]
struct IssueArgs {
    /// The CA directory made by `mesh-ca init`.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Zone of the workload (a lowercase DNS label), e.g. payments.
    #[arg(long, value_name = "ZONE", allow_hyphen_values = true)]
    zone: Zone,
    /// Workload name within the zone (a lowercase DNS label), e.g. charge.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    workload: Workload,
    /// Certificate lifetime, e.g. 15m or 1h. Default: the CA's default (1h).
    #[arg(long, value_name = "TTL", allow_hyphen_values = true)]
    ttl: Option<Ttl>,
    /// Extra DNS name to put beside the SPIFFE ID (repeatable).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,
    /// Directory to write cert.pem, key.pem and bundle.pem into.
    #[arg(long, value_name = "OUTDIR")]
    out: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum BundleFormat {
    /// PEM certificates.
    Pem,
    /// SPIFFE bundle: a JWK Set with use "x509-svid".
    Spiffe,
}

#[derive(Args)]
struct BundleArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[arg(long, value_enum, default_value = "pem")]
    format: BundleFormat,
}

#[derive(Args)]
struct InspectArgs {
    /// A PEM (one or more certificates) or DER certificate file.
    file: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:8443.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Lifetime of certificates issued through the API. Default: the CA's default leaf TTL.
    #[arg(long, value_name = "TTL", allow_hyphen_values = true)]
    cert_ttl: Option<Ttl>,
    /// Requests per second allowed per caller address (bursts of twice that); 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = mesh_ca::server::DEFAULT_RATE)]
    rate_limit: u32,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9443.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Schema of the events printed on stdout: json (zt-mesh's own), ecs (Elastic Common Schema) or ocsf.
    #[arg(long, value_name = "FORMAT", default_value = "json", value_parser = ["json", "ecs", "ocsf"])]
    events_format: String,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token for one identity; prints only the token.
    #[command(after_help = "Example:
  mesh-ca token create --dir ./ca --zone payments --workload charge --ttl 15m > /run/secrets/mesh-token

The store keeps only a hash of the token. Each enrollment spends one use; concurrent
enrollments with a one-use token yield exactly one certificate.")]
    Create(TokenCreateArgs),
    /// List join tokens: id, identity, uses left, expiry and status (never the token).
    #[command(after_help = "Examples:
  mesh-ca token list --dir ./ca
  mesh-ca token list --dir ./ca --json

STATUS is active, expired, used_up or revoked. The ID is what `token revoke` takes; it is
not the token and cannot be used to enroll.")]
    List(TokenListArgs),
    /// Revoke a join token by its id (as `token list` shows it): enrollments with it are refused.
    #[command(after_help = "Example:
  mesh-ca token revoke --dir ./ca 3f2a9c01b7de

A token revoked already is left as it is (exit 0).")]
    Revoke(TokenRevokeArgs),
}

#[derive(Args)]
struct TokenListArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TokenRevokeArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The token's id: 12 hex characters, as `mesh-ca token list` shows it.
    #[arg(value_name = "ID")]
    id: String,
}

#[derive(Args)]
struct ReinstateArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Zone of the identity to reinstate.
    #[arg(long, value_name = "ZONE", allow_hyphen_values = true)]
    zone: Zone,
    /// Workload of the identity to reinstate.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    workload: Workload,
    /// Why, for the audit trail and the revocation log.
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

#[derive(Args)]
struct TokenCreateArgs {
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[arg(long, value_name = "ZONE", allow_hyphen_values = true)]
    zone: Zone,
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    workload: Workload,
    /// How long the token can be used (at most the CA's max_token_ttl: 720h unless `init`
    /// set less).
    #[arg(long, default_value = "15m", value_name = "TTL", allow_hyphen_values = true, value_parser = token_ttl)]
    ttl: Ttl,
    /// How many enrollments the token allows (1 to the CA's max_token_uses: 1000 unless
    /// `init` set less).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=mesh_identity::token::MAX_TOKEN_USES as i64))]
    uses: u32,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["serial", "zone", "from_file"]))]
struct RevokeArgs {
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Serial of the certificate to revoke: hex as `list` and `inspect` show it, or as other
    /// tools print it (any case, leading zeros dropped, `0x` prefix, `:` between bytes).
    #[arg(long, value_name = "HEX")]
    serial: Option<String>,
    /// Zone of the identity to revoke (with --workload).
    #[arg(long, value_name = "ZONE", requires = "workload", allow_hyphen_values = true)]
    zone: Option<Zone>,
    #[arg(long, value_name = "NAME", requires = "zone", allow_hyphen_values = true)]
    workload: Option<Workload>,
    /// Revoke every target listed in FILE (`ZONE/WORKLOAD` or a serial, one a line) at once.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Why, for the audit trail and the revocation list.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// Revoke identities the CA never issued a certificate or a join token for, too.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ListArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap renders them.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other error: clap's first line names the flag and value.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid usage").trim_start_matches("error: ");
            let _ = writeln!(std::io::stderr(), "mesh-ca: error: {first} (see mesh-ca --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Init(a) => init(a),
        Command::Issue(a) => issue(a),
        Command::Bundle(a) => bundle_cmd(a),
        Command::Inspect(a) => inspect_cmd(a),
        Command::List(a) => list(a),
        Command::Completions { shell } => completions(shell),
        Command::Serve(a) => serve(a),
        Command::Token(TokenCommand::Create(a)) => token_create(a),
        Command::Token(TokenCommand::List(a)) => token_list(a),
        Command::Token(TokenCommand::Revoke(a)) => token_revoke(a),
        Command::Revoke(a) => revoke(a),
        Command::Reinstate(a) => reinstate(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Through the writer thread, bounded: a stalled stderr cannot hold the exit.
            mesh_runtime::output::stderr().line(&format!("mesh-ca: error: {e}"));
            mesh_runtime::output::flush_all(EXIT_FLUSH);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The passphrase from --passphrase-file, else from the environment, else none.
///
/// The variable is removed from the environment as it is read (whichever source wins), so a
/// long-running `serve` does not keep it there, nor hand it to anything it starts. Every caller
/// runs before any thread is started (`serve` builds its runtime afterwards), which is what
/// makes changing the environment sound. The kernel's copy of the initial environment
/// (`/proc/PID/environ`, readable by the same user and root) cannot be cleared this way:
/// `--passphrase-file` avoids it.
fn passphrase(args: &PassArgs) -> Result<Option<Passphrase>, CaError> {
    let from_env = std::env::var_os(PASSPHRASE_ENV);
    std::env::remove_var(PASSPHRASE_ENV);
    if let Some(path) = &args.passphrase_file {
        return Passphrase::from_file(path).map(Some).map_err(|e| match e {
            CaError::Io { path, source } => {
                CaError::Passphrase(format!("--passphrase-file {}: {source}", path.display()))
            }
            other => other,
        });
    }
    match from_env {
        Some(v) => Passphrase::from_bytes(v.into_encoded_bytes(), PASSPHRASE_ENV).map(Some),
        None => Ok(None),
    }
}

/// Where the passphrase came from, for messages (never the passphrase itself).
fn passphrase_source(args: &PassArgs) -> String {
    match &args.passphrase_file {
        Some(p) => format!("--passphrase-file {}", p.display()),
        None => PASSPHRASE_ENV.to_owned(),
    }
}

/// A TTL flag no longer than `max`: refused while parsing (exit 2), before any arithmetic.
fn ttl_at_most(s: &str, max: Ttl, what: &str) -> Result<Ttl, String> {
    let ttl: Ttl = s.parse().map_err(|e| format!("{e}"))?;
    if ttl > max {
        return Err(format!("longer than {what} may be ({max})"));
    }
    Ok(ttl)
}

fn ca_ttl(s: &str) -> Result<Ttl, String> {
    ttl_at_most(s, mesh_ca::settings::CA_TTL_CEILING, "a CA certificate's lifetime")
}

fn token_ttl(s: &str) -> Result<Ttl, String> {
    ttl_at_most(s, mesh_identity::token::MAX_TOKEN_TTL, "a join token's lifetime")
}

fn init(a: InitArgs) -> Result<ExitCode, CaError> {
    let pass = passphrase(&a.pass)?;
    if let Some(p) = &pass {
        p.check_new(&passphrase_source(&a.pass))?;
    }
    if pass.is_none() && !a.insecure_no_passphrase {
        return Err(CaError::Passphrase(format!(
            "no passphrase for the CA keys: set {PASSPHRASE_ENV} or --passphrase-file \
             (or --insecure-no-passphrase for a throwaway CA)"
        )));
    }
    let settings = Settings::new(a.trust_domain, a.min_leaf_ttl, a.max_leaf_ttl, a.default_leaf_ttl)?
        .with_token_bounds(a.max_token_ttl, a.max_token_uses)?;
    let opts = InitOptions { settings, root_ttl: a.root_ttl, intermediate_ttl: a.intermediate_ttl };
    let ca = Authority::init(&a.dir, &opts, pass.as_ref())?;
    let keys_note = if pass.is_some() { "encrypted" } else { "UNENCRYPTED (--insecure-no-passphrase)" };
    print_out(&format!(
        "created trust domain {} in {} (root and intermediate CA, keys {keys_note})\n",
        ca.settings.trust_domain,
        ca.path().display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn issue(a: IssueArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let pass = passphrase(&a.pass)?;
    let ca = Authority::open(dir, pass.as_ref())?;
    let id = SpiffeId::new(ca.settings().trust_domain.clone(), a.zone, a.workload);
    check_out_dir(&a.out)?;
    let key = keys::generate()?;
    let leaf = ca.issue(&id, a.ttl, &a.dns, &key, "cli")?;
    let chain = ca.chain_pem(&leaf.der);
    let key_pem = keys::to_pem(&key, None)?;
    let bundle = ca.dir().bundle_pem();
    mesh_ca::fsutil::write_all_or_nothing(
        &a.out,
        &[
            OutFile { name: "key.pem", contents: key_pem.as_bytes(), mode: 0o600 },
            OutFile { name: "bundle.pem", contents: bundle.as_bytes(), mode: 0o644 },
            OutFile { name: "cert.pem", contents: chain.as_bytes(), mode: 0o644 },
        ],
    )?;
    print_out(&format!(
        "issued {} serial {} valid until {} -> {}\n",
        leaf.id,
        leaf.serial,
        leaf.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        a.out.display()
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses an output path that is a file, before anything is signed or recorded.
fn check_out_dir(out: &Path) -> Result<(), CaError> {
    if out.exists() && !out.is_dir() {
        return Err(CaError::Refused(format!("--out {}: exists and is not a directory", out.display())));
    }
    Ok(())
}

fn bundle_cmd(a: BundleArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let text = match a.format {
        BundleFormat::Pem => dir.bundle_pem(),
        BundleFormat::Spiffe => bundle::spiffe_json(std::slice::from_ref(&dir.root), 1)? + "\n",
    };
    print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn inspect_cmd(a: InspectArgs) -> Result<ExitCode, CaError> {
    let raw = mesh_ca::fsutil::read_bounded(&a.file, pem::MAX_CERT_FILE_LEN)?;
    let certs = if raw.starts_with(b"-----") || raw.iter().take(64).all(|b| b.is_ascii()) {
        pem::parse_certs(&raw).map_err(|what| CaError::bad_file(&a.file, &what))?
    } else {
        vec![rustls_pki_types::CertificateDer::from(raw)]
    };
    let report = inspect::inspect(&certs).map_err(|v| CaError::bad_file(&a.file, &v.to_string()))?;
    if a.json {
        print_out(&(serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"))?;
    } else {
        print_out(&report.to_text())?;
    }
    Ok(if report.profile.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(Serialize)]
struct ListJson {
    certificates: Vec<CertJson>,
    tokens: Vec<TokenJson>,
    revocations: Vec<mesh_ca::store::Revocation>,
}

/// A join token as `list` and `token list` show it: never the token, nor its hash.
#[derive(Serialize)]
struct TokenJson {
    id: String,
    spiffe_id: String,
    zone: String,
    workload: String,
    uses_left: i64,
    /// Unix seconds, and the same as RFC 3339.
    expires_at: i64,
    expires: String,
    created_at: i64,
    revoked_at: Option<i64>,
    status: &'static str,
}

fn token_json(t: TokenInfo, td: &TrustDomain, now: i64) -> TokenJson {
    TokenJson {
        id: t.id.clone(),
        spiffe_id: format!("{}/ns/{}/sa/{}", td.id_uri(), t.zone, t.workload),
        status: t.status(now).as_str(),
        expires: rfc3339(t.expires_at),
        zone: t.zone,
        workload: t.workload,
        uses_left: t.uses_left,
        expires_at: t.expires_at,
        created_at: t.created_at,
        revoked_at: t.revoked_at,
    }
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// The token table of `list` and `token list`.
fn token_table(tokens: &[TokenJson]) -> String {
    let mut out =
        format!("{:<12}  {:<40}  {:<9}  {:<20}  STATUS\n", "ID", "IDENTITY", "USES LEFT", "EXPIRES");
    for t in tokens {
        out += &format!(
            "{:<12}  {:<40}  {:<9}  {:<20}  {}\n",
            t.id,
            format!("{}/{}", t.zone, t.workload),
            t.uses_left,
            t.expires,
            t.status
        );
    }
    out
}

#[derive(Serialize)]
struct CertJson {
    serial: mesh_identity::Serial,
    kind: &'static str,
    spiffe_id: String,
    not_before: i64,
    not_after: i64,
    status: &'static str,
}

fn list(a: ListArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let store = dir.store()?;
    let certs = store.certificates()?;
    let now = dir.clock().unix();
    let td = dir.settings.trust_domain.clone();
    let tokens: Vec<TokenJson> = store.tokens()?.into_iter().map(|t| token_json(t, &td, now)).collect();
    let revocations = store.revocations_since(0)?;
    let rows: Vec<CertJson> = certs
        .into_iter()
        .map(|c| CertJson {
            serial: c.serial,
            kind: match c.kind {
                CertKind::Root => "root",
                CertKind::Intermediate => "intermediate",
                CertKind::Leaf => "leaf",
            },
            spiffe_id: c.spiffe_id,
            not_before: c.not_before,
            not_after: c.not_after,
            status: match c.status {
                CertStatus::Active => "active",
                CertStatus::Revoked => "revoked",
            },
        })
        .collect();
    if a.json {
        let out = serde_json::to_string_pretty(&ListJson { certificates: rows, tokens, revocations })
            .unwrap_or_default();
        print_out(&(out + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out =
        format!("{:<32}  {:<12}  {:<8}  {:<20}  SPIFFE ID\n", "SERIAL", "KIND", "STATUS", "EXPIRES");
    for r in &rows {
        let status = if r.status == "active" && r.not_after < now { "expired" } else { r.status };
        out += &format!(
            "{:<32}  {:<12}  {:<8}  {:<20}  {}\n",
            r.serial,
            r.kind,
            status,
            rfc3339(r.not_after),
            r.spiffe_id
        );
    }
    out += &format!("{} certificate(s)\n", rows.len());
    if !tokens.is_empty() {
        out += &format!("\n{}", token_table(&tokens));
    }
    if !revocations.is_empty() {
        out += &format!("\n{:<5}  {:<20}  {:<12}  WHAT\n", "SEQ", "REVOKED AT", "REASON");
        for r in &revocations {
            let what = match (r.action, &r.serial, &r.spiffe_id) {
                (RevocationAction::Reinstate, _, Some(id)) => format!("reinstated {id}"),
                (_, Some(s), _) => format!("certificate {s}"),
                (_, None, Some(id)) => format!("every certificate of {id}"),
                (_, None, None) => "-".into(),
            };
            out += &format!("{:<5}  {:<20}  {:<12}  {what}\n", r.seq, rfc3339(r.revoked_at), r.reason);
        }
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn serve(a: ServeArgs) -> Result<ExitCode, CaError> {
    // Diagnostics (`tracing`, filtered by MESH_LOG or RUST_LOG) go to stderr through the
    // output thread; the CA's events go to stdout through mesh_runtime::events.
    mesh_runtime::diagnostics::init();
    let dir = CaDir::open(&a.dir)?;
    let pass = passphrase(&a.pass)?;
    let ca = Authority::open(dir, pass.as_ref())?;
    let ttl = ca.settings().leaf_ttl(a.cert_ttl)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CaError::Refused(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        });
        mesh_ca::server::serve(ca, ServeOptions { listen: a.listen, cert_ttl: Some(ttl), rate_limit: a.rate_limit, metrics_listen: a.metrics_listen, events_format: a.events_format.parse().unwrap_or_default() }, shutdown).await
    })?;
    // Events still queued for stdout go out before the exit (main flushes on an error).
    mesh_runtime::output::flush_all(EXIT_FLUSH);
    Ok(ExitCode::SUCCESS)
}

fn token_create(a: TokenCreateArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let token = dir.create_token(&a.zone, &a.workload, a.ttl, a.uses)?;
    print_out(&format!("{}\n", token.expose()))?;
    Ok(ExitCode::SUCCESS)
}

fn token_list(a: TokenListArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let now = dir.clock().unix();
    let td = dir.settings.trust_domain.clone();
    let tokens: Vec<TokenJson> =
        dir.store()?.tokens()?.into_iter().map(|t| token_json(t, &td, now)).collect();
    if a.json {
        let out = serde_json::to_string_pretty(&serde_json::json!({ "tokens": tokens })).unwrap_or_default();
        print_out(&(out + "\n"))?;
    } else {
        print_out(&(token_table(&tokens) + &format!("{} token(s)\n", tokens.len())))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn token_revoke(a: TokenRevokeArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let line = match dir.revoke_token(&a.id)? {
        TokenRevocation::Revoked(t) => {
            format!(
                "revoked join token {} for {}/{} ({} use(s) were left)\n",
                t.id, t.zone, t.workload, t.uses_left
            )
        }
        TokenRevocation::AlreadyRevoked(t) => format!(
            "join token {} for {}/{} is already revoked (since {}); nothing changed\n",
            t.id,
            t.zone,
            t.workload,
            rfc3339(t.revoked_at.unwrap_or_default())
        ),
        TokenRevocation::Unknown => {
            return Err(CaError::Refused(format!("no join token has the id {}", a.id)))
        }
    };
    print_out(&line)?;
    Ok(ExitCode::SUCCESS)
}

fn reinstate(a: ReinstateArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    let id = SpiffeId::new(dir.settings.trust_domain.clone(), a.zone.clone(), a.workload.clone());
    let line = match dir.reinstate(&a.zone, &a.workload, &a.reason)? {
        Some(r) => format!(
            "reinstated {id} (revocation #{} lifted by #{}, reason: {}); {} certificate(s) and {} join \
             token(s) from before stay revoked\n",
            r.lifted, r.seq, a.reason, r.certificates, r.tokens
        ),
        None => format!("{id} is not revoked; nothing changed\n"),
    };
    print_out(&line)?;
    Ok(ExitCode::SUCCESS)
}

fn revoke(a: RevokeArgs) -> Result<ExitCode, CaError> {
    let dir = CaDir::open(&a.dir)?;
    if let Some(file) = &a.from_file {
        let targets = revoke_targets(file, &dir.settings.trust_domain)?;
        let outcomes = dir.revoke_many(&targets, &a.reason, a.force)?;
        let new: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| match o {
                RevokeOutcome::Revoked(s) => Some(*s),
                RevokeOutcome::AlreadyRevoked(_) => None,
            })
            .collect();
        let old = outcomes.len() - new.len();
        let line = match (new.first(), new.last()) {
            (Some(first), Some(last)) => {
                let mut l = format!(
                    "revoked {} target(s) from {} (revocations #{first} to #{last}, reason: {})",
                    new.len(),
                    file.display(),
                    a.reason
                );
                if old > 0 {
                    l += &format!("; {old} already revoked, unchanged");
                }
                l
            }
            _ => format!("all {old} target(s) from {} are already revoked; nothing changed", file.display()),
        };
        print_out(&(line + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let target = match (a.serial, a.zone, a.workload) {
        (Some(serial), _, _) => RevokeTarget::serial(&serial)?,
        (None, Some(zone), Some(workload)) => {
            RevokeTarget::Identity(SpiffeId::new(dir.settings.trust_domain.clone(), zone, workload))
        }
        _ => return Err(CaError::Refused("give --serial HEX, or --zone and --workload".into())),
    };
    let outcome = dir.revoke(&target, &a.reason, a.force)?;
    let line = match (&target, outcome) {
        (RevokeTarget::Serial(s), RevokeOutcome::Revoked(seq)) => {
            format!("revoked certificate {s} (revocation #{seq}, reason: {})", a.reason)
        }
        (RevokeTarget::Identity(id), RevokeOutcome::Revoked(seq)) => {
            format!("revoked every certificate of {id} (revocation #{seq}, reason: {})", a.reason)
        }
        (RevokeTarget::Serial(s), RevokeOutcome::AlreadyRevoked(seq)) => {
            format!("certificate {s} is already revoked (#{seq}); nothing changed")
        }
        (RevokeTarget::Identity(id), RevokeOutcome::AlreadyRevoked(seq)) => {
            format!("{id} is already revoked (#{seq}); nothing changed")
        }
    };
    print_out(&(line + "\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// The targets of `revoke --from-file`: `ZONE/WORKLOAD` or a serial a line, `#` comments.
/// Bounded (64 MiB); the first bad line is named with its number.
fn revoke_targets(file: &std::path::Path, td: &TrustDomain) -> Result<Vec<RevokeTarget>, CaError> {
    let raw = mesh_ca::fsutil::read_bounded(file, 64 * 1024 * 1024)
        .map_err(|e| CaError::Refused(format!("--from-file {}: {e}", file.display())))?;
    let text = String::from_utf8(raw)
        .map_err(|_| CaError::Refused(format!("--from-file {}: not UTF-8 text", file.display())))?;
    let mut targets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: String| CaError::Refused(format!("--from-file {}:{}: {why}", file.display(), n + 1));
        let target = match line.split_once('/') {
            Some((zone, workload)) => {
                let zone: Zone = zone.parse().map_err(|e| bad(format!("zone {zone:?}: {e}")))?;
                let workload: Workload =
                    workload.parse().map_err(|e| bad(format!("workload {workload:?}: {e}")))?;
                RevokeTarget::Identity(SpiffeId::new(td.clone(), zone, workload))
            }
            None => RevokeTarget::serial(line)
                .map_err(|_| bad(format!("{line:?} is neither ZONE/WORKLOAD nor a hexadecimal serial")))?,
        };
        targets.push(target);
    }
    Ok(targets)
}

/// `completions SHELL`: the script for every subcommand and flag, written through
/// [`print_out`] (clap_complete's own writer panics on a closed stdout).
fn completions(shell: clap_complete::Shell) -> Result<ExitCode, CaError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "mesh-ca", &mut script);
    print_out(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a command's result to stdout. A closed pipe (`mesh-ca list | head`) or any other
/// write error ends the command with exit code 5 and one line on stderr, never a panic: the
/// caller did not get the result (for `token create`, the token).
fn print_out(s: &str) -> Result<(), CaError> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).and_then(|()| out.flush()).map_err(|e| CaError::io(Path::new("stdout"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passphrase_leaves_the_environment_as_it_is_read() {
        // The only test in this binary that touches the environment.
        std::env::set_var(PASSPHRASE_ENV, "a passphrase from the environment");
        let pass = passphrase(&PassArgs { passphrase_file: None }).expect("read");
        assert!(pass.is_some());
        assert!(std::env::var_os(PASSPHRASE_ENV).is_none(), "{PASSPHRASE_ENV} is still set");

        // Also when a passphrase file wins: the variable does not linger unused.
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("pass");
        std::fs::write(&file, "a passphrase from a file\n").expect("write");
        std::env::set_var(PASSPHRASE_ENV, "another one");
        let pass = passphrase(&PassArgs { passphrase_file: Some(file) }).expect("read");
        assert!(pass.is_some());
        assert!(std::env::var_os(PASSPHRASE_ENV).is_none(), "{PASSPHRASE_ENV} is still set");
    }

    #[test]
    fn token_and_ca_ttl_flags_are_bounded_while_parsing() {
        assert!(token_ttl("720h").is_ok());
        assert!(token_ttl("721h").is_err());
        assert!(token_ttl("100000000000h").is_err());
        assert!(ca_ttl("438000h").is_ok());
        assert!(ca_ttl("100000000h").is_err());
        assert!(ca_ttl("abc").is_err());
    }
}
