//! What every handler shares: the settings, the queue into the model thread, whether the model
//! is ready, the metrics, and the signal that stops the server.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::demo::Site;
use super::metrics::Metrics;
use super::worker::Queue;
use super::Settings;

/// Where the model stands; `/health` and every model route read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Ready,
    /// Loading failed: the server stops and the command exits with this message.
    Failed(String),
}

pub struct AppState {
    pub settings: Settings,
    pub queue: Queue,
    pub metrics: Metrics,
    pub site: Option<Site>,
    phase: Mutex<Phase>,
    stop: Notify,
}

impl AppState {
    pub fn new(settings: Settings, queue: Queue, site: Option<Site>) -> Self {
        Self { settings, queue, metrics: Metrics::new(), site, phase: Mutex::new(Phase::Loading), stop: Notify::new() }
    }

    pub fn phase(&self) -> Phase {
        self.phase.lock().map(|p| p.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_phase(&self, phase: Phase) {
        let failed = matches!(phase, Phase::Failed(_));
        self.metrics.ready.set(i64::from(phase == Phase::Ready));
        match self.phase.lock() {
            Ok(mut p) => *p = phase,
            Err(p) => *p.into_inner() = phase,
        }
        if failed {
            // notify_one keeps the permit if the shutdown future is not waiting yet.
            self.stop.notify_one();
        }
    }

    pub fn load_failure(&self) -> Option<String> {
        match self.phase() {
            Phase::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// Resolves on ctrl-c, SIGTERM, or a failed load: axum then stops accepting connections and
/// waits for the requests in flight.
pub async fn shutdown_signal(state: Arc<AppState>) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => eprintln!("interrupted: finishing the requests in flight"),
        _ = term => eprintln!("terminated: finishing the requests in flight"),
        _ = state.stop.notified() => {}
    }
}
