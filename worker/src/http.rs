//! The worker's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` fails when the processing loop has not turned for [`STALL`]: the
//! kubelet then restarts a worker that is stuck. `/readyz` answers once every assigned
//! task is restored and consuming.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// How long the loop may go without turning before `/healthz` fails.
pub const STALL: Duration = Duration::from_secs(60);

/// What the endpoints report, shared with the processing loop.
#[derive(Clone, Default)]
pub struct Health {
    /// The metrics to serve.
    pub metrics: Arc<Metrics>,
    /// Set while every assigned task is restored and consuming.
    pub ready: Arc<AtomicBool>,
    /// When the loop last turned, in milliseconds since the epoch.
    pub heartbeat: Arc<AtomicU64>,
}

impl Health {
    /// Records that the loop turned.
    pub fn beat(&self) {
        self.heartbeat.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the loop turned within [`STALL`].
    pub fn alive(&self) -> bool {
        now_ms().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) < STALL.as_millis() as u64
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(h): State<Health>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn healthz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.alive() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the processing loop is stuck",
        )
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "restoring or not assigned yet",
        )
    }
}
