//! An axum router served in the background on a bound listener, with a
//! handle to stop it: what both emulators (ARM's ACI, IoT Hub) and their
//! standalone subcommands need. Shutdown is graceful and bounded: requests
//! still in flight after 5 s (a hung fault, say) are cut off.

use std::net::SocketAddr;
use std::time::Duration;

/// How long in-flight requests may finish after a stop.
const DRAIN: Duration = Duration::from_secs(5);

/// A router being served; dropping it stops accepting connections.
pub struct Served {
    /// `http://ADDR`: the endpoint to point a client at.
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Served {
    /// Serve `router` on `listener` until stopped.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
        router: axum::Router,
    ) -> Served {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Served {
            url: format!("http://{addr}"),
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stop accepting connections and wait (at most 5 s) for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(DRAIN, task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Serve until `stop` completes (or the server fails), then shut down
    /// gracefully. For the standalone subcommands.
    pub async fn run_until<F: std::future::Future<Output = ()>>(
        mut self,
        stop: F,
    ) -> std::io::Result<()> {
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let joined = |r: Result<std::io::Result<()>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        tokio::select! {
            r = &mut task => return joined(r),
            () = stop => {}
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(DRAIN, &mut task).await {
            Ok(r) => joined(r),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
