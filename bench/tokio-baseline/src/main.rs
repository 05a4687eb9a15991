//! A minimal tokio-tungstenite broadcast server, the baseline that
//! `syncd-bench compare` measures syncd against.
//!
//! The tiny protocol the bench speaks to every baseline: a text message that
//! starts with `{"op":"sub"` subscribes the connection and is answered
//! `{"op":"ok"}`; any other text is answered `{"op":"ok"}` and sent, as it is,
//! to every subscribed connection. Each connection has an unbounded queue
//! drained by its own task, so nothing is dropped.
//!
//! Usage: `tokio-baseline 127.0.0.1:PORT` (prints `listening` when ready).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

type Subscribers = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on {addr}");
    let subscribers: Subscribers = Arc::default();
    let next_id = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, subscribers.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, subscribers: Subscribers) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            // Take whatever else is queued before flushing once.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let ok = Message::text(r#"{"op":"ok"}"#);
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if text.starts_with(r#"{"op":"sub""#) {
            if let Ok(mut subs) = subscribers.lock() {
                subs.insert(id, tx.clone());
            }
        } else {
            let message = Message::Text(text);
            if let Ok(subs) = subscribers.lock() {
                for sub in subs.values() {
                    let _ = sub.send(message.clone());
                }
            }
        }
        if tx.send(ok.clone()).is_err() {
            break;
        }
    }
    if let Ok(mut subs) = subscribers.lock() {
        subs.remove(&id);
    }
    drop(tx);
    let _ = writer.await;
}
