//! Noticing that the client of a plain (not streamed) request has gone away.
//!
//! actix-web 4 keeps polling a handler after its client disconnects, and drops it only when
//! the response is written to the closed connection (actix/actix-web#3462): a request with a
//! JSON answer would run its whole optimization loop for nobody. So each connection keeps a
//! duplicate of its socket ([`remember`]), and while a request runs, [`watch`] peeks at it:
//! end-of-stream or an error means the client is gone, and the loop's cancel flag is set.
//! A client that half-closes its side while still reading counts as gone; HTTP clients do not.

use actix_web::dev::Extensions;
use std::any::Any;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a running request checks its client.
const EVERY: Duration = Duration::from_millis(200);

/// A connection's socket, shared with the handlers of its requests.
#[derive(Clone)]
pub struct Peer(Arc<std::net::TcpStream>);

impl Peer {
    /// Whether the client has closed the connection. Peeking reads nothing: pipelined bytes
    /// of a next request stay for actix to read.
    fn gone(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        }
    }
}

/// `HttpServer::on_connect` callback: keeps a duplicate of a plain TCP connection's socket in
/// the connection's data. (The duplicate shares the socket's non-blocking mode, so peeking
/// never waits.)
pub fn remember(conn: &dyn Any, data: &mut Extensions) {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
                data.insert(Peer(Arc::new(std::net::TcpStream::from(fd))));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (conn, data);
}

/// Sets `cancel` once the client is gone, until the returned guard is dropped (when the
/// handler finishes). Nothing is watched without a remembered socket.
pub fn watch(peer: Option<Peer>, cancel: Arc<AtomicBool>) -> Option<Watch> {
    let peer = peer?;
    let task = actix_web::rt::spawn(async move {
        loop {
            actix_web::rt::time::sleep(EVERY).await;
            if peer.gone() {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
    });
    Some(Watch(task))
}

/// Stops watching when dropped.
pub struct Watch(actix_web::rt::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}
