//! A Transform's status: its conditions built as values, compared with what is stored,
//! and written by server-side apply only when they changed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use weir_crds::{Transform, TransformStatus};

use super::Ctx;
use crate::context::Happened;
use crate::{FIELD_MANAGER, Result};

/// How many restarts make a worker that is waiting to restart again crash-looping.
pub const CRASH_LOOP_RESTARTS: i32 = 3;

/// Why a condition is what it is: its `reason`, stable for alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum Reason {
    /// The SQL compiled against the DataStreams it may read.
    Compiled,
    /// The SQL, the window policy or an expectation does not compile.
    CompileFailed,
    /// The SQL reads a DataStream of another namespace that does not grant this one.
    InputNotGranted,
    /// The spec cannot be deployed as written (a name too long, an unsupported setting).
    InvalidSpec,
    /// Every fixture test passed (or there are none).
    TestsPassed,
    /// A fixture test failed or could not run: the rollout is blocked.
    TestsFailed,
    /// Not checked, because an earlier step failed.
    NotChecked,
    /// An input DataStream's topic is not ready yet.
    InputsNotReady,
    /// The output DataStream is written by another Transform, or declared with another
    /// schema.
    OutputConflict,
    /// Kafka could not be reached or refused an internal topic.
    KafkaUnavailable,
    /// The workers are not deployed (yet).
    NotDeployed,
    /// The workers of the current version are rolling out.
    RollingOut,
    /// Every worker of the current version is ready.
    WorkersAvailable,
    /// Fewer workers are ready than asked for.
    WorkersUnavailable,
    /// Scaled to zero: nothing runs, nothing is lost.
    ScaledToZero,
    /// Compiled, tested, deployed and available.
    Ready,
    /// Nothing wrong is seen with the running workers.
    Healthy,
    /// A worker keeps crashing and restarting.
    CrashLooping,
    /// The workers write dead letters.
    DeadLettersRising,
    /// The workers fall further behind their input.
    LagGrowing,
    /// The change cannot keep the running state: refused by `upgradePolicy: keepState`.
    UpgradeBlocked,
    /// The Transform's Kafka principal lacks an ACL its plan needs (provided credentials).
    AclMissing,
    /// The Transform's Kafka credentials cannot be used (no Secret named, a Secret missing,
    /// unmarked or of an unknown layout).
    CredentialsInvalid,
}

impl Reason {
    /// The reason as written in a condition.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// When to look again after a reconcile stopped for this reason.
    pub fn retry(self) -> Retry {
        match self {
            // The user's mistake: only a change of the Transform can mend it.
            Self::InvalidSpec | Self::UpgradeBlocked | Self::TestsFailed => Retry::OnChange,
            // Something outside Weir is not ready yet and will be soon.
            Self::InputsNotReady => Retry::Soon,
            // A Secret may be mended at any moment, and not every change of one wakes us.
            Self::CredentialsInvalid => Retry::Later,
            Self::KafkaUnavailable => Retry::AsError,
            // Another object's change wakes the Transform by watch; the resync is the
            // backstop.
            _ => Retry::OnResync,
        }
    }
}

/// When to look again after a reconcile stopped short of Ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// On the next change of the Transform.
    OnChange,
    /// After the resync interval.
    OnResync,
    /// In a few seconds.
    Soon,
    /// In half a minute.
    Later,
    /// As an error, with the controller's growing backoff.
    AsError,
}

/// One condition's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// Why.
    pub reason: Reason,
    /// For people.
    pub message: String,
}

impl State {
    /// A true condition.
    pub fn yes(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status: "True",
            reason,
            message: message.into(),
        }
    }

    /// A false condition.
    pub fn no(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            status: "False",
            reason,
            message: message.into(),
        }
    }

    /// A condition not known, because an earlier step failed.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self {
            status: "Unknown",
            reason: Reason::NotChecked,
            message: message.into(),
        }
    }
}

/// What a reconcile observed.
#[derive(Debug, Clone)]
pub struct Report {
    /// `Compiled`.
    pub compiled: State,
    /// `TestsPassed`.
    pub tests: State,
    /// `Available`.
    pub available: State,
    /// `Degraded`: true while the workers run but something is wrong with them.
    pub degraded: State,
    /// Why the Transform is not Ready beyond the three above, if anything.
    pub problem: Option<State>,
    /// The facts kept in status.
    pub facts: TransformStatus,
}

impl Report {
    /// A report that keeps the stored facts (fingerprint, inputs, replicas) until this
    /// reconcile learns better.
    pub fn new(tf: &Transform) -> Self {
        let mut facts = tf.status.clone().unwrap_or_default();
        facts.conditions.clear();
        facts.observed_generation = tf.metadata.generation;
        facts.selector = Some(super::build::selector_string(tf));
        Self {
            compiled: State::unknown("not compiled yet"),
            tests: State::unknown("not run: the SQL has not compiled"),
            available: State::unknown("no workers deployed yet"),
            degraded: State::no(Reason::Healthy, "no problem seen"),
            problem: None,
            facts,
        }
    }

    /// Reads the workers' state from their Deployment.
    pub fn workers(&mut self, tf: &Transform, deployment: Option<&Deployment>) {
        let want = tf.spec.parallelism;
        let Some(d) = deployment else {
            self.facts.replicas = 0;
            self.available = State::no(Reason::NotDeployed, "no workers are deployed");
            return;
        };
        let status = d.status.clone().unwrap_or_default();
        self.facts.replicas = status.replicas.unwrap_or(0);
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let current =
            d.metadata.generation.is_some() && status.observed_generation >= d.metadata.generation;
        self.available = if want == 0 {
            State::yes(
                Reason::ScaledToZero,
                "scaled to zero: no worker runs; the input waits in Kafka",
            )
        } else if !current || updated < want || status.replicas.unwrap_or(0) > want {
            State::no(
                Reason::RollingOut,
                format!("{updated} of {want} workers run the current version"),
            )
        } else if ready < want {
            State::no(
                Reason::WorkersUnavailable,
                format!("{ready} of {want} workers are ready"),
            )
        } else {
            State::yes(
                Reason::WorkersAvailable,
                format!("{ready} of {want} workers are ready"),
            )
        };
    }

    /// Reads the workers' pods: `Degraded` while one crash-loops (restarted
    /// [`CRASH_LOOP_RESTARTS`] times or more and now waiting to restart again).
    pub fn pods(&mut self, pods: &[Pod]) {
        for pod in pods {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            for c in statuses {
                let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
                if c.restart_count >= CRASH_LOOP_RESTARTS
                    && waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                {
                    let exit = c
                        .last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| format!(" (last exit code {})", t.exit_code))
                        .unwrap_or_default();
                    self.degraded = State::yes(
                        Reason::CrashLooping,
                        format!(
                            "worker pod {} has restarted {} times{exit} and keeps crashing; \
                             see its log (kubectl logs {} --previous)",
                            pod.metadata.name.as_deref().unwrap_or_default(),
                            c.restart_count,
                            pod.metadata.name.as_deref().unwrap_or_default(),
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// The Ready condition: the first thing that is not right, or Ready.
    pub fn ready(&self) -> State {
        for s in [&self.compiled, &self.tests] {
            if s.status != "True" {
                return State::no(s.reason, s.message.clone());
            }
        }
        if let Some(p) = &self.problem {
            return State::no(p.reason, p.message.clone());
        }
        if self.available.status != "True" {
            return State::no(self.available.reason, self.available.message.clone());
        }
        State::yes(Reason::Ready, self.available.message.clone())
    }

    /// The status to store, keeping the transition time of conditions that did not change.
    pub fn into_status(self, previous: Option<&TransformStatus>) -> TransformStatus {
        let generation = self.facts.observed_generation;
        let ready = self.ready();
        let mut status = self.facts;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for (type_, s) in [
            ("Compiled", self.compiled),
            ("TestsPassed", self.tests),
            ("Available", self.available),
            ("Degraded", self.degraded),
            ("Ready", ready),
        ] {
            let before = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
            let last_transition_time = match before {
                Some(c) if c.status == s.status => c.last_transition_time.clone(),
                _ => now.clone(),
            };
            status.conditions.push(Condition {
                type_: type_.into(),
                status: s.status.into(),
                reason: s.reason.as_str().into(),
                message: s.message,
                observed_generation: generation,
                last_transition_time,
            });
        }
        status
    }
}

/// Writes the status if it differs from the stored one; publishes a Warning Event when
/// Ready turns false for a new reason.
pub async fn write(api: &Api<Transform>, tf: &Transform, ctx: &Ctx, report: Report) -> Result<()> {
    let previous = tf.status.as_ref();
    let ready = report.ready();
    let status = report.into_status(previous);
    if previous == Some(&status) {
        return Ok(());
    }
    let previous_reason = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.reason.clone());
    let patch = serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "Transform",
        "status": status,
    });
    let name = tf.metadata.name.as_deref().unwrap_or_default();
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.status_write("transform");
    let transient = matches!(
        ready.reason,
        Reason::RollingOut
            | Reason::NotDeployed
            | Reason::NotChecked
            | Reason::InputsNotReady
            | Reason::WorkersUnavailable
    );
    if ready.status != "True"
        && !transient
        && previous_reason.as_deref() != Some(ready.reason.as_str())
    {
        ctx.publish(
            tf,
            EventType::Warning,
            Happened::Problem(ready.reason.as_str()),
            ready.message,
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_reasons_are_the_variant_names() {
        assert_eq!(Reason::UpgradeBlocked.as_str(), "UpgradeBlocked");
        assert_eq!(Reason::TestsFailed.as_str(), "TestsFailed");
        assert_eq!(
            crate::data_stream::status::Reason::ReplicationFactorChangeUnsupported.as_str(),
            "ReplicationFactorChangeUnsupported"
        );
        assert_eq!(
            crate::context::Happened::TopicClaimed.reason(),
            "TopicClaimed"
        );
        assert_eq!(
            crate::context::Happened::Problem("KafkaRejected").reason(),
            "KafkaRejected"
        );
    }

    fn tf() -> Transform {
        serde_yaml::from_str(
            r#"
apiVersion: weir.dev/v1alpha1
kind: Transform
metadata: { name: t, namespace: n, generation: 2 }
spec: { description: d, owner: o, sql: "SELECT 1", output: { name: out } }
"#,
        )
        .expect("valid")
    }

    #[test]
    fn ready_names_the_first_problem_and_keeps_transition_times() {
        let tf = tf();
        let mut r = Report::new(&tf);
        r.compiled = State::no(Reason::CompileFailed, "spec.sql: line 1, column 8: nope");
        assert_eq!(r.ready().reason, Reason::CompileFailed);
        let first = r.clone().into_status(None);
        let again = r.into_status(Some(&first));
        assert_eq!(first, again, "a steady state writes nothing");
        let ready = first
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.observed_generation, Some(2));

        let mut r = Report::new(&tf);
        r.compiled = State::yes(Reason::Compiled, "ok");
        r.tests = State::yes(Reason::TestsPassed, "ok");
        r.workers(&tf, None);
        assert_eq!(r.ready().reason, Reason::NotDeployed);
    }
}
