//! How the Hippo and Nomad emulators and the fault proxy serve HTTP: bound first (so the
//! address is known before anything is served), served in a tokio task, stopped gracefully on
//! request and aborted when dropped.
//!
//! The controller's server (`crates/controller/src/http.rs`) is not this one: it caps its
//! connections, times out slow clients, ends connections after a minute and backs off failed
//! accepts, against hostile clients. A test double must do none of that (a blocking query to the
//! emulated Nomad is held for minutes), so the two share no more than hyper itself.

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use tokio::{sync::oneshot, task::JoinHandle};

/// How long [`BackgroundServer::stop`] waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr` (port 0: any free port) for a server on tokio; answers the bound address.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Resolves when [`BackgroundServer::stop`] is called: a server's graceful-shutdown signal.
pub(crate) struct StopSignal(oneshot::Receiver<()>);

impl Future for StopSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender counts as a stop too.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A server running in a tokio task. Dropping it aborts the task without waiting.
pub(crate) struct BackgroundServer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl BackgroundServer {
    /// Serves `app` on `listener` (from [`bind`]). `name` says whose server a log line is about.
    pub(crate) fn router(
        listener: TcpListener,
        app: Router,
        name: &'static str,
    ) -> Result<Self, hyper::Error> {
        let server = axum::Server::from_tcp(listener)?.serve(app.into_make_service());
        Ok(Self::spawn(name, |stop| {
            server.with_graceful_shutdown(stop)
        }))
    }

    /// Runs the server future that `serve` makes with the given graceful-shutdown signal (for
    /// a server that is not an axum router).
    pub(crate) fn spawn<F>(name: &'static str, serve: impl FnOnce(StopSignal) -> F) -> Self
    where
        F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let server = serve(StopSignal(rx));
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "{name}: server stopped with an error");
            }
        });
        BackgroundServer {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops accepting requests and waits (up to 5 s) for those in flight to finish.
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
