//! The operator's Prometheus metrics.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    category: String,
}

/// Reconcile counts, errors by stable category, durations and status writes.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    durations: Family<ControllerLabels, Histogram>,
    status_writes: Family<ControllerLabels, Counter>,
    kafka_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weir_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let status_writes = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            durations.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches sent to the apiserver",
            status_writes.clone(),
        );
        let kafka_connections = Gauge::default();
        registry.register(
            "kafka_connections",
            "Admin clients open to named Kafka connections (spec.kafka)",
            kafka_connections.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            status_writes,
            kafka_connections,
        }
    }
}

impl Metrics {
    /// Records how many admin clients to named connections are open.
    pub fn set_kafka_connections(&self, open: usize) {
        self.kafka_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.durations.get_or_create(&labels).clone(),
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile under the error's category.
    pub fn reconcile_failure(&self, controller: &str, error: &Error) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                category: error.category().into(),
            })
            .inc();
    }

    /// Counts a status write.
    pub fn status_write(&self, controller: &str) {
        self.status_writes
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Records a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
