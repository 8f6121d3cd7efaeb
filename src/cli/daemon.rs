//! `recpipe daemon`: the scheduler and the HTTP server in one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use recpipe::config::Settings;

use super::Failure;

/// `recpipe daemon`: the scheduler and the HTTP server until SIGTERM or Ctrl-C,
/// then a drain of the running steps (`daemon.shutdown_grace`); a second signal
/// exits at once.
pub async fn daemon(settings: Arc<Settings>) -> Result<(), Failure> {
    use recpipe::daemon::{Daemon, DaemonError};
    use recpipe::scheduler::CronSchedulerClock;
    use tokio::signal::unix::{SignalKind, signal};

    // The port first: a daemon that cannot serve must exit before it resumes
    // (and then abandons) the runs a previous process left.
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .map_err(|e| {
            let error = anyhow!("server.listen `{}`: {e}", settings.server.listen);
            match e.kind() {
                // Another process holds the port: it may be gone at the next try.
                std::io::ErrorKind::AddrInUse => Failure::Transient(error),
                _ => Failure::BadInput(error),
            }
        })?;
    let clock = CronSchedulerClock::start()
        .await
        .map_err(|e| Failure::Failed(anyhow!("starting the scheduler: {e}")))?;
    let daemon = Daemon::start(settings.clone(), Arc::new(clock))
        .await
        .map_err(|e| match e {
            // The state folder or its database: a disk or mount problem.
            DaemonError::History(_) => Failure::Transient(e.into()),
            e => Failure::Failed(e.into()),
        })?;
    tracing::info!(listen = %settings.server.listen, pipelines = daemon.pipelines().len(), "daemon started");
    let poll = {
        let d = daemon.clone();
        // Settings bound it to at least 100 ms.
        let every = settings.daemon.reload_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let d = d.clone();
                // Reads and parses files: off the async threads.
                let _ = tokio::task::spawn_blocking(move || d.reload(false)).await;
            }
        })
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| Failure::Failed(e.into()))?;
    let hup = {
        let d = daemon.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading pipelines");
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.reload(true)).await;
            }
        })
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::Failed(e.into()))?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, recpipe::server::app(daemon.clone()))
            .with_graceful_shutdown(async {
                let _ = server_stopped.await;
            })
            .into_future(),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(grace = ?settings.daemon.shutdown_grace, "shutting down: no new runs, draining");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("second signal: exiting now; interrupted runs resume on the next start");
        std::process::exit(130);
    });
    daemon.shutdown(settings.daemon.shutdown_grace).await;
    poll.abort();
    hup.abort();
    let _ = stop_server.send(());
    // A browser keeping a connection open must not hold the exit either.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("daemon stopped");
    Ok(())
}
