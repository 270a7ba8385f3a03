//! Accepting connections. `axum::serve` gives hyper no timer, so hyper's header deadline never
//! fires there and a client that sends its headers a byte at a time, or opens connections and
//! sends nothing, holds them for ever. Here each connection has `--idle-timeout-s` to send a
//! request's headers (an idle keep-alive connection included), at most `--max-connections` are
//! open (the rest wait in the kernel's backlog), and shutdown is graceful: no new connections,
//! idle ones closed, requests in flight finished. A client that stops reading its responses
//! would hold its connection for ever too (hyper waits on a full socket buffer, and no request
//! deadline runs then): a write that makes no progress for `--idle-timeout-s` ends the connection.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

pub async fn serve(listener: TcpListener, app: Router, idle: Duration, max_connections: usize, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait for some to close rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(idle));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .serve_connection(TokioIo::new(Box::pin(stream)), TowerToHyperService::new(app.clone()));
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection's end (the client left, a parse error, the header deadline) is no error
            // of the server's.
            let _ = watched.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
