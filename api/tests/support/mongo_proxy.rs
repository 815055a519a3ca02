//! A TCP proxy in front of the test's MongoDB-wire server that breaks on cue: it
//! forwards every message until the client has sent its N-th command of a given name,
//! then drops that message and its connection, refuses new connections, and closes
//! each other one when it next sends — MongoDB gone half-way through a piece of work,
//! at a point the test chooses. Compressed messages are not looked into (the test's
//! clients do not compress).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// OP_MSG, the wire protocol's message of every command since MongoDB 3.6.
const OP_MSG: i32 = 2013;

pub struct MongoProxy {
    /// `host:port` to put in a `mongodb://` URL.
    pub addr: String,
    /// Commands named `command` the server received (the one cut on is not counted).
    pub forwarded: Arc<AtomicUsize>,
    /// Whether the proxy has cut.
    pub cut: Arc<AtomicBool>,
}

/// What the connections share.
#[derive(Clone)]
struct Cue {
    command: &'static str,
    nth: usize,
    /// Commands named `command` sent by clients, the one cut on included.
    seen: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
}

impl MongoProxy {
    /// Proxies to `upstream` (`host:port`); cuts on the `nth` (1-based) `command` sent.
    pub async fn start(upstream: String, command: &'static str, nth: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let forwarded = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let cue = Cue {
            command,
            nth,
            seen: Arc::new(AtomicUsize::new(0)),
            forwarded: forwarded.clone(),
            cut: cut.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if cue.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, cue.clone()));
            }
        });
        Self {
            addr,
            forwarded,
            cut,
        }
    }
}

/// One connection: messages from the client one at a time, bytes back as they come.
async fn pipe(client: TcpStream, server: TcpStream, cue: Cue) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
    });
    loop {
        let mut header = [0u8; 16];
        if client_rx.read_exact(&mut header).await.is_err() || cue.cut.load(Ordering::SeqCst) {
            break;
        }
        let length = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let mut body = vec![0u8; length.saturating_sub(16)];
        if client_rx.read_exact(&mut body).await.is_err() {
            break;
        }
        let op = i32::from_le_bytes(header[12..16].try_into().unwrap());
        if op == OP_MSG && command_name(&body) == Some(cue.command) {
            if cue.seen.fetch_add(1, Ordering::SeqCst) + 1 >= cue.nth {
                cue.cut.store(true, Ordering::SeqCst);
                break;
            }
            cue.forwarded.fetch_add(1, Ordering::SeqCst);
        }
        if cue.cut.load(Ordering::SeqCst)
            || server_tx.write_all(&header).await.is_err()
            || server_tx.write_all(&body).await.is_err()
        {
            break;
        }
    }
    back.abort();
}

/// The command an OP_MSG body carries: the first key of its section-0 document (flag
/// bits, section kind 0, the document's length, an element type, then the key).
fn command_name(body: &[u8]) -> Option<&str> {
    if body.get(4) != Some(&0) {
        return None;
    }
    let key = body.get(10..)?;
    let end = key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&key[..end]).ok()
}
