//! A TCP proxy that can fall silent: from the cue on it forwards nothing either way,
//! and accepts new connections only to hold them, yet closes none — a network path
//! that died without a reset (a cable pulled, a firewall that forgot the flow), where a
//! client's bytes go out and nothing, not even an error, comes back. `speak` makes
//! new connections forward again; those held stay silent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

pub struct SilentProxy {
    /// `host:port` to connect to instead of the upstream.
    pub addr: String,
    silent: Arc<AtomicBool>,
}

impl SilentProxy {
    /// Forwards to `upstream` (`host:port`) until [`SilentProxy::fall_silent`].
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = Arc::new(AtomicBool::new(false));
        let cue = silent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if cue.load(Ordering::SeqCst) {
                    tokio::spawn(hold(client));
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                tokio::spawn(forward(client_rx, server_tx, cue.clone()));
                tokio::spawn(forward(server_rx, client_tx, cue.clone()));
            }
        });
        Self { addr, silent }
    }

    pub fn fall_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    pub fn speak(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }
}

/// Keeps a connection open, reading nothing, for as long as the test runs.
async fn hold<T>(connection: T) {
    std::future::pending::<()>().await;
    drop(connection);
}

/// One direction of a connection; once silent, what it read is kept, not sent.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silent: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            return hold((from, to)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
