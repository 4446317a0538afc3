//! On deletion: the Transform's Kafka principal, and its internal topics by
//! `spec.output.deletionPolicy`.

use kube::runtime::controller::Action;
use tracing::{info, warn};
use weir_crds::Transform;
use weir_crds::compile::id_of;
use weir_crds::data_stream::DeletionPolicy;

use super::build::{self, InternalTopics};
use super::{Ctx, principal};
use crate::Result;

/// On deletion: the owned objects go with the Transform (owner references); the internal
/// topics are deleted when `spec.output.deletionPolicy` is `Delete`, and kept otherwise.
pub(super) async fn cleanup(tf: &Transform, ctx: &Ctx) -> Result<Action> {
    ctx.worker_health.forget(&id_of(&tf.metadata));
    if ctx.workers.identity.mode == principal::PrincipalMode::Managed && tf.spec.kafka.is_none() {
        // The workers' principal goes with the Transform: its ACLs, then its credential.
        let names = build::names(tf, 0);
        let principal_name = principal::managed_principal(&names);
        principal::apply_acls(ctx, &principal_name, &Default::default()).await?;
        if let Some(mechanism) = principal::scram(ctx.workers.identity.mechanism) {
            ctx.kafka
                .delete_scram(&names.principal_user(), mechanism)
                .await?;
        }
        info!(
            principal = principal_name,
            "deleted the Transform's Kafka principal"
        );
    }
    if tf.spec.output.deletion_policy != DeletionPolicy::Delete {
        ctx.forget_connection(&tf.metadata);
        return Ok(Action::await_change());
    }
    // A named connection whose Secrets are gone (its namespace being deleted) is served
    // from the client the Transform used; without one its internal topics are left.
    let kafka = match ctx
        .kafka_for_connection(&tf.metadata, tf.spec.kafka.as_ref())
        .await
    {
        Ok(k) => Some(k),
        Err(problem) => ctx.cached_connection(&tf.metadata).or_else(|| {
            warn!(
                problem = problem.0,
                "the Transform's Kafka connection cannot be used: its internal topics stay"
            );
            None
        }),
    };
    let epoch = tf.status.as_ref().map_or(0, |s| s.state_epoch);
    if let Some(kafka) = &kafka {
        for topic in InternalTopics::all(tf, epoch) {
            match kafka.describe(&topic).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    kafka.delete(&topic).await?;
                    info!(topic, "deleted internal topic");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    ctx.forget_connection(&tf.metadata);
    Ok(Action::await_change())
}
