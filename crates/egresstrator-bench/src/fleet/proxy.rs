//! A counting TCP proxy in front of our own Consul: every HTTP request the fleet sends is
//! counted here, from the bytes on the wire, independently of the agent's code.
//!
//! The watchers only send bodiless GETs, so each request ends at its header block's blank
//! line (`\r\n\r\n`); the request line says which endpoint it was for. The proxy also has a
//! gate: while closed (during a Consul restart, until the restarted Consul holds the policy
//! again) it still accepts and counts requests, then closes the connection unanswered, as a
//! Consul that is down would (a refused connection costs the same retry).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy has seen so far.
pub struct Stats {
    start: Instant,
    kv: AtomicU64,
    health: AtomicU64,
    other: AtomicU64,
    /// Requests that met a closed gate or a Consul that refused the connection.
    refused: AtomicU64,
    connections: AtomicU64,
    /// When each request arrived, in µs since `start`.
    times: Mutex<Vec<u64>>,
    /// When Consul's side of a forwarded connection ended, in µs since `start`.
    upstream_closed: Mutex<Vec<u64>>,
    open: AtomicBool,
}

/// Request counts at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub kv: u64,
    pub health: u64,
    pub other: u64,
    pub refused: u64,
    pub connections: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.kv + self.health + self.other
    }

    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            kv: self.kv - before.kv,
            health: self.health - before.health,
            other: self.other - before.other,
            refused: self.refused - before.refused,
            connections: self.connections - before.connections,
        }
    }
}

impl Stats {
    pub fn counts(&self) -> Counts {
        Counts {
            kv: self.kv.load(Ordering::Relaxed),
            health: self.health.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    /// Arrival times (since the proxy started) of the requests between `from` and `to`.
    pub fn times_between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let lo = from.saturating_duration_since(self.start).as_micros() as u64;
        let hi = to.saturating_duration_since(self.start).as_micros() as u64;
        let times = match self.times.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        times
            .iter()
            .filter(|&&t| t >= lo && t <= hi)
            .map(|&t| Duration::from_micros(t))
            .collect()
    }

    /// When (since the proxy started) Consul ended forwarded connections after `from`.
    pub fn upstream_closed_since(&self, from: Instant) -> Vec<Duration> {
        let lo = from.saturating_duration_since(self.start).as_micros() as u64;
        let closed = match self.upstream_closed.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        closed
            .iter()
            .filter(|&&t| t >= lo)
            .map(|&t| Duration::from_micros(t))
            .collect()
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn record(&self, head: &[u8]) {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let path = line.split_whitespace().nth(1).unwrap_or_default();
        let counter = if path.starts_with("/v1/kv/") {
            &self.kv
        } else if path.starts_with("/v1/health/service/") {
            &self.health
        } else {
            &self.other
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let t = self.start.elapsed().as_micros() as u64;
        match self.times.lock() {
            Ok(mut v) => v.push(t),
            Err(p) => p.into_inner().push(t),
        }
    }

    /// Counts every complete header block in `pending` + `chunk`, keeping the unfinished
    /// rest for the next chunk.
    fn scan(&self, pending: &mut Vec<u8>, chunk: &[u8]) -> u64 {
        pending.extend_from_slice(chunk);
        let mut n = 0;
        while let Some(pos) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            self.record(&pending[..pos]);
            pending.drain(..pos + 4);
            n += 1;
        }
        if pending.len() > 64 * 1024 {
            pending.clear(); // not HTTP as the watchers speak it; never grow without bound
        }
        n
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        // A deep accept queue: 1,200 watchers reconnect at once after a Consul restart, and
        // a SYN dropped from a full queue is retried by the kernel only after a second,
        // which would show up as the proxy's delay, not the agents' backoff.
        let socket = tokio::net::TcpSocket::new_v4().context("counting proxy socket")?;
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot bind the counting proxy on 127.0.0.1")?;
        let listener: TcpListener = socket
            .listen(8192)
            .context("cannot listen on the counting proxy's socket")?;
        let addr = listener
            .local_addr()
            .context("the counting proxy's address")?;
        let stats = Arc::new(Stats {
            start: Instant::now(),
            kv: AtomicU64::new(0),
            health: AtomicU64::new(0),
            other: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            times: Mutex::new(Vec::with_capacity(1 << 16)),
            upstream_closed: Mutex::new(Vec::new()),
            open: AtomicBool::new(true),
        });
        let st = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // EMFILE and the like: wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, upstream, st.clone()));
            }
        });
        Ok(Proxy { addr, stats, task })
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, stats: Arc<Stats>) {
    let _ = client.set_nodelay(true);
    let up = if stats.open.load(Ordering::SeqCst) {
        TcpStream::connect(upstream).await.ok()
    } else {
        None
    };
    let Some(up) = up else {
        refuse(client, &stats).await;
        return;
    };
    let _ = up.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let c2u = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending = Vec::new();
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let chunk = buf.get(..n).unwrap_or_default();
            stats.scan(&mut pending, chunk);
            uw.write_all(chunk).await?;
        }
    };
    let u2c = tokio::io::copy(&mut ur, &mut cw);
    tokio::select! {
        _ = c2u => {}
        _ = u2c => {
            let t = stats.start.elapsed().as_micros() as u64;
            match stats.upstream_closed.lock() {
                Ok(mut v) => v.push(t),
                Err(p) => p.into_inner().push(t),
            }
        }
    }
}

/// Consul is "down": read the request (to count it), then close without an answer.
async fn refuse(mut client: TcpStream, stats: &Stats) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let read = async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let got = stats.scan(&mut pending, buf.get(..n).unwrap_or_default());
                    if got > 0 {
                        stats.refused.fetch_add(got, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
}
