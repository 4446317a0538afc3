//! Leader election: one replica reconciles at a time, through a coordination.k8s.io Lease.
//!
//! [`Candidate::acquire`] waits for the Lease; [`Leader::hold`] keeps it while the
//! controllers run: the lease manager renews it, a monitor stops the controllers when it
//! is lost, and a fence ends the process before the Lease could expire under a replica
//! that no longer renews it. [`Held::release`] gives the Lease up on the way out, so that
//! a successor takes over at once instead of waiting out its duration.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a stopping leader waits to release its Lease.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the Lease lasts after its last renewal; another replica may take over then.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before the Lease expires the leader renews it.
const LEASE_GRACE: Duration = Duration::from_secs(5);
/// How long before the Lease would expire an unrenewed leader stops (its safety margin for
/// noticing late and for clock differences).
const FENCE_MARGIN: Duration = Duration::from_secs(3);

type LeaseTask = JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

/// The Lease this replica competes for.
#[derive(Clone)]
pub struct Candidate {
    /// The apiserver.
    pub client: kube::Client,
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity in the Lease.
    pub identity: String,
}

/// This replica holds the Lease; nothing reconciles yet.
pub struct Leader {
    candidate: Candidate,
    leader: watch::Receiver<bool>,
    task: LeaseTask,
}

/// The Lease held while the controllers run.
pub struct Held {
    monitor: JoinHandle<()>,
    task: LeaseTask,
    lost: oneshot::Receiver<()>,
}

impl Candidate {
    /// Waits until this replica holds the Lease; `None` when `shutdown` comes first.
    pub async fn acquire(self, shutdown: &CancellationToken) -> Result<Option<Leader>, String> {
        info!(identity = self.identity, lease = %self.name, namespace = %self.namespace, "waiting for the leader lease");
        let manager = kube_lease_manager::LeaseManagerBuilder::new(self.client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&self.identity)
            .with_field_manager(format!("{}-lease", crate::FIELD_MANAGER))
            .with_duration(LEASE_DURATION.as_secs())
            .with_grace(LEASE_GRACE.as_secs())
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let (mut leader, task) = manager.watch().await;
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err("the lease manager stopped".into());
                    }
                }
                _ = shutdown.cancelled() => {
                    drop(leader);
                    let _ = task.await;
                    return Ok(None);
                }
            }
        }
        info!(identity = self.identity, "became the leader");
        Ok(Some(Leader {
            candidate: self,
            leader,
            task,
        }))
    }
}

impl Leader {
    /// Keeps the Lease until `shutdown`: a lost Lease cancels `shutdown` (the controllers
    /// stop), and the fence runs until `controllers_done`.
    pub fn hold(self, shutdown: CancellationToken, controllers_done: CancellationToken) -> Held {
        let Self {
            candidate,
            mut leader,
            task,
        } = self;
        let fencing = fence(candidate);
        tokio::spawn(async move {
            tokio::select! {
                _ = fencing => {}
                _ = controllers_done.cancelled() => {}
            }
        });
        let (lost_tx, lost) = oneshot::channel::<()>();
        // Watches for lost leadership until shutdown; then drops the last receiver, which
        // tells the lease task to release the Lease.
        let monitor = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = leader.changed() => {
                        if changed.is_err() || !*leader.borrow_and_update() {
                            let _ = lost_tx.send(());
                            shutdown.cancel();
                            return;
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Held {
            monitor,
            task,
            lost,
        }
    }
}

impl Held {
    /// Releases the Lease (never waiting long for it); whether it had been lost.
    pub async fn release(mut self) -> bool {
        let _ = self.monitor.await;
        match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, self.task).await {
            Ok(Ok(Ok(_))) => info!("released the leader lease"),
            Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "the lease task failed"),
            Err(_) => warn!("could not release the leader lease in time; it expires on its own"),
        }
        self.lost.try_recv().is_ok()
    }
}

/// Fencing: the leader reads its Lease every second and ends the process at once, before
/// the Lease can expire and another replica take over, if the Lease shows no renewal by
/// this replica in time (the apiserver unreachable, renewals failing) or names another
/// holder. Exiting, rather than stopping the controllers, is what guarantees that no
/// reconcile in flight goes on writing to Kafka or the apiserver after leadership ends.
async fn fence(lease: Candidate) {
    let leases: Api<Lease> = Api::namespaced(lease.client, &lease.namespace);
    let mut valid_until = SystemTime::now() + LEASE_DURATION - FENCE_MARGIN;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let read = tokio::time::timeout(Duration::from_secs(2), leases.get(&lease.name)).await;
        if let Ok(Ok(found)) = read {
            let spec = found.spec.unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
                error!(holder = ?spec.holder_identity, "the leader lease names another holder; exiting");
                std::process::exit(1);
            }
            if let Some(renewed) = spec.renew_time {
                valid_until =
                    valid_until_after(SystemTime::from(renewed.0), spec.lease_duration_seconds);
            }
        }
        if SystemTime::now() > valid_until {
            error!(
                "could not renew the leader lease in time; exiting before another replica may \
                 take over"
            );
            std::process::exit(1);
        }
    }
}

/// Until when a Lease renewed at `renewed` for `duration_seconds` (its own, or the default)
/// may be acted on, leaving [`FENCE_MARGIN`].
fn valid_until_after(renewed: SystemTime, duration_seconds: Option<i32>) -> SystemTime {
    let duration = duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(LEASE_DURATION, Duration::from_secs);
    renewed + duration.saturating_sub(FENCE_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_acted_on_until_its_margin_before_expiry() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            valid_until_after(at, Some(15)),
            at + Duration::from_secs(12)
        );
        assert_eq!(valid_until_after(at, None), at + Duration::from_secs(12));
        // A Lease shorter than the margin is never acted on past its renewal.
        assert_eq!(valid_until_after(at, Some(2)), at);
        assert_eq!(
            valid_until_after(at, Some(-1)),
            at + Duration::from_secs(12)
        );
    }
}
