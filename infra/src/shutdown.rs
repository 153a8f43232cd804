//! The signal that stops a service: Ctrl-C (SIGINT) or SIGTERM, whichever comes first.

use tokio::signal::unix::{self, SignalKind};

/// Resolves when the process is asked to stop. If the handlers cannot be installed the
/// process can only be killed, so this then never resolves (and says so in the log).
pub async fn signal() {
    let terminate = async {
        match unix::signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(err) = result {
                tracing::error!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
        () = terminate => {}
    }
    tracing::info!("stop requested, shutting down");
}
