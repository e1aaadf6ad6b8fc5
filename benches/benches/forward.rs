//! Copying through an established pair, in memory: `mesh_proxy::forward::splice` between two
//! tokio duplex pipes (the plain copy loop alone), and the whole sidecar pair (outbound splice
//! -> mTLS client -> mTLS server -> inbound splice -> echo app) for a keep-alive style
//! request/response round trip and a bulk one-way transfer. Current-thread runtime, so the
//! numbers are CPU per operation without cross-thread wake-ups.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_benches::{echo, sidecar_pair, Pki, PIPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BULK: usize = 1024 * 1024;
const REQ: usize = 100;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Writes `BULK` bytes into `tx` in 16 KiB chunks while reading them all from `rx`.
async fn one_way<W, R>(tx: &mut W, rx: &mut R, chunk: &[u8], sink: &mut [u8])
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    let send = async {
        for _ in 0..BULK / chunk.len() {
            tx.write_all(chunk).await.expect("write");
        }
    };
    let recv = async {
        let mut got = 0;
        while got < BULK {
            got += rx.read(sink).await.expect("read");
        }
    };
    tokio::join!(send, recv);
}

fn splice_plain(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Bytes(BULK as u64));
    g.bench_function("splice_plain_1MiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (mut tx, a) = tokio::io::duplex(PIPE);
                let (bb, mut rx) = tokio::io::duplex(PIPE);
                tokio::spawn(mesh_benches::splice(a, bb, Duration::from_secs(300)));
                let chunk = vec![0x5au8; 16 * 1024];
                let mut sink = vec![0u8; PIPE];
                let start = Instant::now();
                for _ in 0..iters {
                    one_way(&mut tx, &mut rx, &chunk, &mut sink).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn sidecar_pair_copy(c: &mut Criterion) {
    let pki = Pki::new();
    let rt = runtime();
    let mut g = c.benchmark_group("sidecar_pair");
    g.throughput(Throughput::Elements(1));
    g.bench_function("roundtrip_100B", |b| {
        b.iter_custom(|iters| {
            let (server, client) = pki.configs();
            rt.block_on(async {
                let (mut app, far) = sidecar_pair(server, client).await;
                tokio::spawn(echo(far));
                let req = [0x61u8; REQ];
                let mut resp = [0u8; REQ];
                let start = Instant::now();
                for _ in 0..iters {
                    app.write_all(&req).await.expect("write");
                    app.read_exact(&mut resp).await.expect("read");
                }
                start.elapsed()
            })
        })
    });
    g.throughput(Throughput::Bytes(BULK as u64));
    g.bench_function("bulk_1MiB", |b| {
        b.iter_custom(|iters| {
            let (server, client) = pki.configs();
            rt.block_on(async {
                let (mut app, mut far) = sidecar_pair(server, client).await;
                let chunk = vec![0x5au8; 16 * 1024];
                let mut sink = vec![0u8; PIPE];
                let start = Instant::now();
                for _ in 0..iters {
                    one_way(&mut app, &mut far, &chunk, &mut sink).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, splice_plain, sidecar_pair_copy);
criterion_main!(benches);
