//! What every store backend must do, as one test suite: [`store_contract`] runs each check
//! on a fresh, empty store from the caller's opener and panics (with what broke) on the first
//! that fails. SQLite runs it in `cargo test -p mesh-ca`; a PostgreSQL backend's test calls it
//! through the `test-util` feature.
//!
//! The checks are about what the CA relies on, not about how a backend gets there: a join
//! token spent exactly once however many callers race, a serial never recorded twice, a
//! revocation log whose positions only grow and whose pages agree with it, and an audit entry
//! for every write, carrying the time the caller gave.

use std::sync::Barrier;

use mesh_identity::Serial;

use super::{
    CertKind, CertRecord, CertStatus, IdentityName, IdentityRecord, NewToken, Redemption, Reinstatement,
    RevocationAction, RevocationPage, RevokeOutcome, Store, StoreError, TokenRejection, TokenRevocation,
    TokenStatus,
};

/// The time every check writes at (Unix seconds): fixed, so what the store records can be
/// compared with what it was given.
const NOW: i64 = 1_700_000_000;
/// Callers racing for one token.
const RACERS: usize = 8;

/// Runs the whole contract; `open` gives a new, empty store each time it is called.
pub fn store_contract(open: &dyn Fn() -> Box<dyn Store>) {
    token_spent_exactly_once_under_concurrency(open().as_ref(), 1);
    token_spent_exactly_once_under_concurrency(open().as_ref(), 5);
    spent_expired_and_unknown_tokens_are_rejected(open().as_ref());
    revoked_identity_spends_nothing(open().as_ref());
    serials_are_unique(open().as_ref());
    revocation_log_is_ordered_and_pages_agree(open().as_ref());
    revocation_pages_are_compacted_with_a_growing_sequence(open().as_ref());
    is_revoked_by_serial_and_by_identity(open().as_ref());
    repeat_revocations_change_nothing(open().as_ref());
    certificates_of_a_revoked_identity_read_revoked(open().as_ref());
    tokens_have_ids_and_a_revoked_token_is_refused(open().as_ref());
    identity_records_count_and_name_the_revocation_in_force(open().as_ref());
    reinstatement_lifts_the_identity_and_keeps_what_came_before_revoked(open().as_ref());
    every_write_is_audited_at_the_time_given(open().as_ref());
}

/// A serial made from a number, distinct for distinct numbers.
pub fn serial(n: u64) -> Serial {
    let mut bytes = [0u8; 9];
    bytes[0] = 0x40;
    bytes[1..].copy_from_slice(&n.to_be_bytes());
    Serial::from_der(&bytes)
}

fn leaf(n: u64, spiffe_id: &str) -> CertRecord {
    CertRecord {
        serial: serial(n),
        kind: CertKind::Leaf,
        spiffe_id: spiffe_id.into(),
        not_before: NOW - 60,
        not_after: NOW + 3600,
        status: CertStatus::Active,
    }
}

fn token(hash_byte: u8, uses: u32, expires_at: i64) -> NewToken {
    NewToken {
        id: format!("{hash_byte:02x}").repeat(6),
        hash: format!("{hash_byte:02x}").repeat(32),
        zone: "orders".into(),
        workload: "api".into(),
        expires_at,
        uses,
    }
}

const ID: &str = "spiffe://example.org/ns/orders/sa/api";

/// One redemption of `hash` whose certificate gets serial `n`.
fn redeem_one(
    store: &dyn Store,
    hash: &str,
    n: u64,
) -> Result<Result<CertRecord, TokenRejection>, StoreError> {
    let mut batch = [Redemption {
        hash: hash.to_owned(),
        actor: "contract".into(),
        issue: Box::new(move |zone, workload| {
            Some(leaf(n, &format!("spiffe://example.org/ns/{zone}/sa/{workload}")))
        }),
    }];
    let mut out = store.redeem_tokens(NOW, &mut batch).expect("the redemption transaction commits");
    assert_eq!(out.len(), 1, "one outcome per redemption");
    out.remove(0)
}

/// RACERS threads redeem one token with `uses` uses at the same moment: exactly `uses` win,
/// the rest are told it is used up, and the store's counts agree afterwards.
fn token_spent_exactly_once_under_concurrency(store: &dyn Store, uses: u32) {
    let t = token(0xa0 + uses as u8, uses, NOW + 600);
    store.create_token(&t, "contract", NOW).expect("create token");
    let start = Barrier::new(RACERS);
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (start, hash) = (&start, &t.hash);
                scope.spawn(move || {
                    start.wait();
                    redeem_one(store, hash, 1000 + i as u64)
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().expect("a racer panicked")).collect()
    });
    let won = outcomes.iter().filter(|o| matches!(o, Ok(Ok(_)))).count();
    assert_eq!(won, uses as usize, "a {uses}-use token raced by {RACERS}: {outcomes:?}");
    for o in &outcomes {
        assert!(
            matches!(o, Ok(Ok(_)) | Ok(Err(TokenRejection::UsedUp))),
            "a loser is told the token is used up, nothing else: {o:?}"
        );
    }
    let tokens = store.tokens().expect("tokens");
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].uses_left, 0, "every use spent, none twice");
    let certs = store.certificates().expect("certificates");
    assert_eq!(certs.len(), uses as usize, "one certificate recorded per winner: {certs:?}");
    let mut winners: Vec<Serial> =
        outcomes.into_iter().filter_map(|o| o.ok()?.ok()).map(|c| c.serial).collect();
    let mut recorded: Vec<Serial> = certs.into_iter().map(|c| c.serial).collect();
    winners.sort();
    recorded.sort();
    assert_eq!(winners, recorded, "what was handed out is what was recorded");
}

fn spent_expired_and_unknown_tokens_are_rejected(store: &dyn Store) {
    let once = token(1, 1, NOW + 600);
    let expired = token(2, 3, NOW);
    store.create_token(&once, "contract", NOW).expect("create");
    store.create_token(&expired, "contract", NOW).expect("create");
    assert!(matches!(redeem_one(store, &once.hash, 1), Ok(Ok(_))), "a fresh token is accepted");
    assert_eq!(redeem_one(store, &once.hash, 2), Ok(Err(TokenRejection::UsedUp)));
    assert_eq!(
        redeem_one(store, &expired.hash, 3),
        Ok(Err(TokenRejection::Expired)),
        "a token is refused from its expiry time on"
    );
    assert_eq!(redeem_one(store, &"ff".repeat(32), 4), Ok(Err(TokenRejection::Unknown)));
    let left: Vec<i64> = store.tokens().expect("tokens").iter().map(|t| t.uses_left).collect();
    assert_eq!(left, [0, 3], "a refused redemption spends nothing");
    assert_eq!(store.certificates().expect("certificates").len(), 1, "only the accepted one is recorded");
}

fn revoked_identity_spends_nothing(store: &dyn Store) {
    let t = token(3, 2, NOW + 600);
    store.create_token(&t, "contract", NOW).expect("create");
    store.revoke(None, Some(ID), "gone", "contract", NOW).expect("revoke identity");
    assert_eq!(redeem_one(store, &t.hash, 5), Ok(Err(TokenRejection::IdentityRevoked)));
    assert_eq!(store.tokens().expect("tokens")[0].uses_left, 2, "nothing spent");
    assert!(store.certificates().expect("certificates").is_empty(), "nothing recorded");
}

fn serials_are_unique(store: &dyn Store) {
    let first = leaf(7, ID);
    store.record_issued(&first, "contract", NOW).expect("first record");
    let again = CertRecord {
        spiffe_id: "spiffe://example.org/ns/other/sa/x".into(),
        kind: CertKind::Root,
        ..leaf(7, ID)
    };
    let e = store.record_issued(&again, "contract", NOW + 1);
    assert!(matches!(e, Err(StoreError::Conflict(_))), "a reused serial is a conflict: {e:?}");
    assert_eq!(
        store.certificate(&serial(7)).expect("read"),
        Some(first.clone()),
        "the first record is unchanged"
    );
    assert_eq!(store.certificates().expect("certificates"), [first]);
    assert_eq!(store.certificate(&serial(8)).expect("read"), None);
    // Through a redemption too: the conflict undoes the spend.
    let t = token(4, 1, NOW + 600);
    store.create_token(&t, "contract", NOW).expect("create");
    let e = redeem_one(store, &t.hash, 7);
    assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}");
    assert_eq!(store.tokens().expect("tokens")[0].uses_left, 1, "a redemption that failed spent nothing");
}

fn revocation_log_is_ordered_and_pages_agree(store: &dyn Store) {
    assert_eq!(store.revocation_head().expect("head"), 0, "an empty log is at 0");
    let mut seqs = Vec::new();
    for n in 0..4 {
        store.record_issued(&leaf(n, ID), "contract", NOW).expect("record");
        seqs.push(store.revoke(Some(&serial(n)), None, "r", "contract", NOW).expect("revoke"));
    }
    let ids: Vec<String> = (0..5).map(|i| format!("spiffe://example.org/ns/z/sa/w{i}")).collect();
    let targets: Vec<(Option<&Serial>, Option<&str>)> =
        ids.iter().map(|i| (None, Some(i.as_str()))).collect();
    let out = store.revoke_batch(&targets, "bulk", "contract", NOW).expect("batch");
    assert!(out.iter().all(|o| matches!(o, RevokeOutcome::Revoked(_))), "{out:?}");
    let (first, last) = (out[0].seq(), out[4].seq());
    assert_eq!(last - first, 4, "a batch takes consecutive positions");
    seqs.extend(first..=last);
    seqs.push(store.revoke(None, Some(ID), "r", "contract", NOW).expect("revoke"));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "positions strictly increase in write order: {seqs:?}");
    assert!(seqs[0] > 0);
    let head = store.revocation_head().expect("head");
    assert_eq!(head, *seqs.last().expect("entries"), "the head is the last position written");

    let log = store.revocations_since(0).expect("log");
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs, "the log is every entry, in order");
    assert_eq!(log[0].serial, Some(serial(0)));
    assert_eq!(log[4].spiffe_id.as_deref(), Some(ids[0].as_str()));
    assert_eq!(log[4].serial, None);
    assert_eq!(store.revocations_since(seqs[5]).expect("tail"), log[6..].to_vec());
    assert!(store.revocations_since(head).expect("caught up").is_empty());

    // Pages of 3 walk the same log in order; `more` until the last.
    let mut since = 0;
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.revocation_page(since, NOW, 3).expect("page");
        assert!(page.entries.len() <= 3, "a page holds at most its limit");
        assert!(page.sequence >= since, "a page's sequence never goes back");
        assert!(page.entries.iter().all(|r| r.seq > since && r.seq <= page.sequence));
        paged.extend(page.entries.iter().cloned());
        since = page.sequence;
        pages += 1;
        if !page.more {
            break;
        }
        assert!(pages < 10, "pages never end");
    }
    assert_eq!(pages, 4, "10 entries in pages of 3");
    assert_eq!(since, head, "the last page reaches the head");
    assert_eq!(paged, log, "nothing live was compacted: the pages are the log");
    let p = store.revocation_page(head, NOW, 3).expect("caught up");
    assert_eq!((p.entries.len(), p.sequence, p.more), (0, head, false));
}

fn revocation_pages_are_compacted_with_a_growing_sequence(store: &dyn Store) {
    let now = NOW;
    let expired = CertRecord { not_after: now - 1, ..leaf(0x0e, ID) };
    let expired_too = CertRecord { not_after: now - 1, ..leaf(0x0d, ID) };
    let live = leaf(0x0f, ID);
    store.record_issued(&expired, "contract", now).expect("expired leaf");
    store.record_issued(&expired_too, "contract", now).expect("expired leaf");
    store.record_issued(&live, "contract", now).expect("live leaf");
    let empty = store.revocation_page(0, now, 10).expect("page");
    assert_eq!((empty.entries.len(), empty.sequence, empty.more), (0, 0, false));

    // 1: an expired certificate's serial, 2: a live one, 3..=7: identities, 8: another
    // expired one.
    let s1 = store.revoke(Some(&expired.serial), None, "r", "contract", now).expect("revoke");
    store.revoke(Some(&live.serial), None, "r", "contract", now).expect("revoke");
    let ids: Vec<String> = (0..5).map(|i| format!("spiffe://example.org/ns/z/sa/w{i}")).collect();
    let targets: Vec<(Option<&Serial>, Option<&str>)> =
        ids.iter().map(|i| (None, Some(i.as_str()))).collect();
    store.revoke_batch(&targets, "bulk", "contract", now).expect("batch");
    store.revoke(Some(&expired_too.serial), None, "r", "contract", now).expect("revoke");
    // Positions relative to the first, whatever a backend starts its log at.
    let at = |k: i64| s1 - 1 + k;
    assert_eq!(store.revocation_head().expect("head"), at(8));

    let seqs = |p: &RevocationPage| p.entries.iter().map(|r| r.seq).collect::<Vec<_>>();
    let p1 = store.revocation_page(0, now, 3).expect("page 1");
    assert_eq!((seqs(&p1), p1.sequence, p1.more), (vec![at(2), at(3), at(4)], at(4), true));
    // Entry 8 is compacted away: the page holds 5..=7, and its sequence moves past 8.
    let p2 = store.revocation_page(p1.sequence, now, 3).expect("page 2");
    assert_eq!((seqs(&p2), p2.sequence, p2.more), (vec![at(5), at(6), at(7)], at(8), false));
    let p3 = store.revocation_page(at(7), now, 3).expect("only compacted entries left");
    assert_eq!((seqs(&p3), p3.sequence, p3.more), (vec![], at(8), false));
    // Before the certificate expired, its revocation was served; the full log keeps all.
    assert_eq!(
        seqs(&store.revocation_page(0, now - 10, 100).expect("earlier")),
        (1..=8).map(at).collect::<Vec<_>>()
    );
    assert_eq!(store.revocations_since(0).expect("log").len(), 8);
    assert_eq!(store.certificate(&live.serial).expect("read").map(|c| c.status), Some(CertStatus::Revoked));
}

fn is_revoked_by_serial_and_by_identity(store: &dyn Store) {
    let other = "spiffe://example.org/ns/orders/sa/other";
    for (n, id) in [(1, ID), (2, ID), (3, other)] {
        store.record_issued(&leaf(n, id), "contract", NOW).expect("record");
    }
    assert!(!store.is_revoked(Some(&serial(1)), ID).expect("check"), "nothing revoked yet");
    store.revoke(Some(&serial(1)), None, "key-compromise", "contract", NOW).expect("revoke serial");
    assert!(store.is_revoked(Some(&serial(1)), ID).expect("check"), "by its serial");
    assert!(
        !store.is_revoked(Some(&serial(2)), ID).expect("check"),
        "a serial revocation is that certificate only"
    );
    assert!(!store.is_revoked(None, ID).expect("check"), "... not its identity");
    let status = |n| store.certificate(&serial(n)).expect("read").map(|c| c.status);
    assert_eq!((status(1), status(2)), (Some(CertStatus::Revoked), Some(CertStatus::Active)));

    store.revoke(None, Some(other), "decommissioned", "contract", NOW).expect("revoke identity");
    assert!(store.is_revoked(None, other).expect("check"), "by identity");
    assert!(store.is_revoked(Some(&serial(3)), other).expect("check"));
    assert!(store.is_revoked(Some(&serial(99)), other).expect("check"), "and its future certificates");
    assert_eq!(status(3), Some(CertStatus::Revoked));
    assert!(!store.is_revoked(None, ID).expect("check"));
}

fn every_write_is_audited_at_the_time_given(store: &dyn Store) {
    let mut expected: Vec<(i64, &str)> = Vec::new();
    store.record_issued(&leaf(1, ID), "a", NOW + 1).expect("record");
    expected.push((NOW + 1, "cert.issued"));
    store.create_token(&token(9, 2, NOW + 600), "b", NOW + 2).expect("token");
    expected.push((NOW + 2, "token.created"));
    let mut batch = [Redemption {
        hash: token(9, 2, 0).hash,
        actor: "c".into(),
        issue: Box::new(|_, _| Some(leaf(2, ID))),
    }];
    let out = store.redeem_tokens(NOW + 3, &mut batch).expect("redeem");
    assert!(matches!(out[..], [Ok(Ok(_))]), "{out:?}");
    expected.push((NOW + 3, "token.used"));
    store.revoke(Some(&serial(1)), None, "r", "d", NOW + 4).expect("revoke");
    expected.push((NOW + 4, "cert.revoked"));
    let ids = ["spiffe://example.org/ns/z/sa/a", "spiffe://example.org/ns/z/sa/b"];
    let targets: Vec<(Option<&Serial>, Option<&str>)> = ids.iter().map(|i| (None, Some(*i))).collect();
    store.revoke_batch(&targets, "r", "e", NOW + 5).expect("batch");
    expected.extend([(NOW + 5, "cert.revoked"), (NOW + 5, "cert.revoked")]);
    // A repeat writes nothing, audit included.
    store.revoke_batch(&targets, "again", "e", NOW + 5).expect("repeat");
    store.audit("ca.started", "f", "detail", NOW + 6).expect("audit");
    expected.push((NOW + 6, "ca.started"));
    let mut batch = [Redemption {
        hash: token(9, 2, 0).hash,
        actor: "g".into(),
        issue: Box::new(|_, _| Some(leaf(3, "spiffe://example.org/ns/z/sa/a"))),
    }];
    let out = store.redeem_tokens(NOW + 7, &mut batch).expect("redeem");
    assert_eq!(out, [Ok(Err(TokenRejection::IdentityRevoked))]);
    expected.push((NOW + 7, "token.rejected"));
    let id = token(9, 2, 0).id;
    assert!(matches!(store.revoke_token(&id, "h", NOW + 8), Ok(TokenRevocation::Revoked(_))));
    expected.push((NOW + 8, "token.revoked"));
    assert!(matches!(store.revoke_token(&id, "h", NOW + 8), Ok(TokenRevocation::AlreadyRevoked(_))));
    let a = IdentityName { spiffe_id: ids[0], zone: "z", workload: "a" };
    assert!(store.reinstate(&a, "mistake", "i", NOW + 9).expect("reinstate").is_some());
    expected.push((NOW + 9, "identity.reinstated"));
    assert_eq!(store.reinstate(&a, "again", "i", NOW + 9).expect("repeat"), None);

    let trail = store.audit_since(0).expect("audit trail");
    let got: Vec<(i64, &str)> = trail.iter().map(|e| (e.at, e.op.as_str())).collect();
    assert_eq!(got, expected, "one entry per write, at the time the caller gave: {trail:?}");
    assert!(trail.windows(2).all(|w| w[0].seq < w[1].seq), "positions increase in write order");
    let actors: Vec<&str> = trail.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["a", "b", "c", "d", "e", "e", "f", "g", "h", "i"]);
    assert!(trail[0].detail.contains(serial(1).as_str()), "{trail:?}");
    assert_eq!(store.audit_since(trail[6].seq).expect("tail"), trail[7..].to_vec());
}

/// Revoking what is revoked already writes nothing and names the entry that revokes it: an
/// identity revoked twice, a serial twice, a certificate of a revoked identity, a target
/// named twice in one batch.
fn repeat_revocations_change_nothing(store: &dyn Store) {
    store.record_issued(&leaf(1, ID), "contract", NOW).expect("record");
    store
        .record_issued(&leaf(2, "spiffe://example.org/ns/orders/sa/other"), "contract", NOW)
        .expect("record");
    let first = store.revoke(None, Some(ID), "r", "contract", NOW).expect("revoke");
    let head = store.revocation_head().expect("head");
    let trail = store.audit_since(0).expect("audit").len();
    assert_eq!(
        store.revoke_batch(&[(None, Some(ID))], "again", "contract", NOW + 1).expect("repeat"),
        [RevokeOutcome::AlreadyRevoked(first)]
    );
    assert_eq!(
        store
            .revoke_batch(&[(Some(&serial(1)), None)], "again", "contract", NOW + 1)
            .expect("its certificate"),
        [RevokeOutcome::AlreadyRevoked(first)],
        "a certificate of a revoked identity is revoked by the identity's entry"
    );
    assert_eq!(store.revoke(None, Some(ID), "again", "contract", NOW + 1).expect("revoke"), first);
    assert_eq!(store.revocation_head().expect("head"), head, "a repeat logs nothing");
    assert_eq!(store.audit_since(0).expect("audit").len(), trail, "a repeat audits nothing");

    let twice = [(Some(&serial(2)), None), (Some(&serial(2)), None)];
    let out = store.revoke_batch(&twice, "r", "contract", NOW + 2).expect("batch");
    assert_eq!(out, [RevokeOutcome::Revoked(head + 1), RevokeOutcome::AlreadyRevoked(head + 1)]);
    assert_eq!(
        store.revoke_batch(&[(Some(&serial(2)), None)], "r", "contract", NOW + 3).expect("again"),
        [RevokeOutcome::AlreadyRevoked(head + 1)]
    );
    assert_eq!(store.revocations_since(0).expect("log").len(), 2);
}

/// `certificates` and `certificate` read a certificate of a revoked identity as revoked, also
/// one recorded after the revocation (by a mesh-ca that still issued to revoked identities,
/// or racing the revocation).
fn certificates_of_a_revoked_identity_read_revoked(store: &dyn Store) {
    store.record_issued(&leaf(1, ID), "contract", NOW).expect("record");
    store.revoke(None, Some(ID), "r", "contract", NOW).expect("revoke");
    store.record_issued(&leaf(2, ID), "contract", NOW + 1).expect("record after");
    let statuses: Vec<CertStatus> = store.certificates().expect("list").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [CertStatus::Revoked, CertStatus::Revoked]);
    assert_eq!(store.certificate(&serial(2)).expect("read").map(|c| c.status), Some(CertStatus::Revoked));
}

/// Tokens carry the id they were created with; a revoked token is refused as revoked, spends
/// nothing, and revoking it again or an unknown id changes nothing.
fn tokens_have_ids_and_a_revoked_token_is_refused(store: &dyn Store) {
    let (a, b) = (token(0x21, 2, NOW + 600), token(0x22, 1, NOW + 600));
    store.create_token(&a, "contract", NOW).expect("create");
    store.create_token(&b, "contract", NOW).expect("create");
    let listed = store.tokens().expect("tokens");
    assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [a.id.as_str(), b.id.as_str()]);
    assert!(listed.iter().all(|t| t.status(NOW) == TokenStatus::Active && t.revoked_at.is_none()));
    assert_eq!(listed[0].status(NOW + 600), TokenStatus::Expired);

    match store.revoke_token(&a.id, "contract", NOW + 1).expect("revoke") {
        TokenRevocation::Revoked(t) => assert_eq!((t.id, t.revoked_at), (a.id.clone(), Some(NOW + 1))),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.revoke_token(&a.id, "contract", NOW + 2).expect("again"),
        TokenRevocation::AlreadyRevoked(t) if t.revoked_at == Some(NOW + 1)
    ));
    assert_eq!(
        store.revoke_token("0123456789ab", "contract", NOW).expect("unknown"),
        TokenRevocation::Unknown
    );
    assert_eq!(redeem_one(store, &a.hash, 1), Ok(Err(TokenRejection::Revoked)));
    assert!(matches!(redeem_one(store, &b.hash, 2), Ok(Ok(_))), "the other token still works");
    let listed = store.tokens().expect("tokens");
    assert_eq!((listed[0].uses_left, listed[0].status(NOW)), (2, TokenStatus::Revoked), "nothing spent");
    assert_eq!(listed[1].status(NOW), TokenStatus::UsedUp);
    assert_eq!(store.certificates().expect("certificates").len(), 1);
    // An id is unique: a second token with the same id is a conflict.
    let clash = NewToken { hash: "ee".repeat(32), ..a.clone() };
    assert!(matches!(store.create_token(&clash, "contract", NOW), Err(StoreError::Conflict(_))));
}

const NAME: IdentityName<'static> = IdentityName { spiffe_id: ID, zone: "orders", workload: "api" };

fn identity_records_count_and_name_the_revocation_in_force(store: &dyn Store) {
    let none = IdentityRecord { certificates: 0, tokens: 0, revoked: None };
    assert_eq!(store.identity(&NAME).expect("identity"), none, "an identity nobody made");
    store.record_issued(&leaf(1, ID), "contract", NOW).expect("record");
    store
        .record_issued(&leaf(2, "spiffe://example.org/ns/orders/sa/other"), "contract", NOW)
        .expect("record");
    store.create_token(&token(0x31, 1, NOW + 600), "contract", NOW).expect("token");
    assert_eq!(
        store.identity(&NAME).expect("identity"),
        IdentityRecord { certificates: 1, tokens: 1, revoked: None }
    );
    let seq = store.revoke(None, Some(ID), "r", "contract", NOW).expect("revoke");
    assert_eq!(store.identity(&NAME).expect("identity").revoked, Some(seq));
    store.reinstate(&NAME, "mistake", "contract", NOW).expect("reinstate");
    assert_eq!(store.identity(&NAME).expect("identity").revoked, None);
    let again = store.revoke(None, Some(ID), "r", "contract", NOW).expect("revoke again");
    assert!(again > seq);
    assert_eq!(store.identity(&NAME).expect("identity").revoked, Some(again));
}

/// A reinstatement lifts the identity (new certificates and tokens work) but not what came
/// before: its unexpired certificates get serial entries ahead of the reinstatement, its
/// tokens are revoked; the lifted identity entry is compacted away, the rest is served in
/// order; reinstating what is not revoked writes nothing.
fn reinstatement_lifts_the_identity_and_keeps_what_came_before_revoked(store: &dyn Store) {
    let old_live = leaf(1, ID);
    let old_expired = CertRecord { not_after: NOW - 1, ..leaf(2, ID) };
    store.record_issued(&old_live, "contract", NOW - 100).expect("record");
    store.record_issued(&old_expired, "contract", NOW - 100).expect("record");
    let old_token = token(0x41, 3, NOW + 600);
    store.create_token(&old_token, "contract", NOW).expect("token");
    assert_eq!(store.reinstate(&NAME, "nothing to lift", "contract", NOW).expect("not revoked"), None);
    assert_eq!(store.revocation_head().expect("head"), 0, "nothing written");

    let lifted = store.revoke(None, Some(ID), "compromised", "contract", NOW).expect("revoke");
    let r: Reinstatement =
        store.reinstate(&NAME, "mistake", "contract", NOW).expect("reinstate").expect("revoked");
    assert_eq!((r.lifted, r.certificates, r.tokens), (lifted, 1, 1), "{r:?}");
    assert_eq!(r.seq, lifted + 2, "one serial entry, then the reinstatement");

    assert!(!store.is_revoked(None, ID).expect("check"), "the identity is lifted");
    assert!(!store.is_revoked(Some(&serial(9)), ID).expect("check"), "a new certificate is not revoked");
    assert!(store.is_revoked(Some(&old_live.serial), ID).expect("check"), "an old one stays revoked");
    assert_eq!(
        store.certificate(&old_live.serial).expect("read").map(|c| c.status),
        Some(CertStatus::Revoked)
    );
    assert_eq!(
        redeem_one(store, &old_token.hash, 3),
        Ok(Err(TokenRejection::Revoked)),
        "old tokens stay out"
    );
    let fresh = token(0x42, 1, NOW + 600);
    store.create_token(&fresh, "contract", NOW).expect("token");
    let issued = redeem_one(store, &fresh.hash, 10).expect("commit").expect("a new token enrolls");
    assert_eq!(issued.status, CertStatus::Active);
    assert_eq!(store.certificate(&serial(10)).expect("read").map(|c| c.status), Some(CertStatus::Active));

    // Served in order: the old certificate's entry, then the reinstatement; the lifted
    // identity entry is compacted away (for a follower that never saw it, and one that did
    // reads the reinstatement after it).
    let log = store.revocations_since(0).expect("log");
    assert_eq!(log.len(), 3);
    assert_eq!(
        (log[2].action, log[2].spiffe_id.as_deref(), log[2].serial.as_ref()),
        (RevocationAction::Reinstate, Some(ID), None)
    );
    assert_eq!((log[1].serial.as_ref(), log[1].spiffe_id.as_ref()), (Some(&old_live.serial), None));
    for since in [0, lifted] {
        let page = store.revocation_page(since, NOW, 10).expect("page");
        let got: Vec<i64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(got, [lifted + 1, r.seq], "from {since}");
        assert_eq!(page.sequence, r.seq);
    }
    // Revoked again: in force, served.
    let again = store.revoke(None, Some(ID), "again", "contract", NOW).expect("revoke");
    let page = store.revocation_page(0, NOW, 10).expect("page");
    assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [lifted + 1, r.seq, again]);
    assert!(store.is_revoked(Some(&serial(10)), ID).expect("check"));
}
