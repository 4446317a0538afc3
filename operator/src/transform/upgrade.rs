//! What a change to a running Transform does to its state, by `spec.upgradePolicy`.
//!
//! A Transform's state lives in its changelog and its position in its consumer group; both
//! belong to a *state epoch*. Epoch 0 uses the names the worker derives itself
//! (`weir.<ns>.<name>`, `<ns>.<name>.changelog`, `<ns>.<name>.repartition`); epoch N > 0
//! appends `.eN`, so that a reprocessing plan starts with no state and no offsets and never
//! reads what the old plan wrote.
//!
//! A change keeps the epoch — the state and the offsets carry over — when the running
//! state is valid for the new plan: the plan is the same, both plans are stateless, or
//! both keep the same state (the same *state fingerprint*: the same stateful operators
//! over the same inputs, with only what is computed from their results changed). Any
//! other change needs `upgradePolicy: reprocess`, which starts a new epoch, and is
//! otherwise refused with a condition saying what would be lost.

use weir_crds::transform::UpgradePolicy;

/// What is running now, from the workers' Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The plan fingerprint the workers run.
    pub plan: String,
    /// What that plan's state means (its state fingerprint); `None` for workers deployed
    /// before the operator recorded it, whose state only the same plan can use.
    pub state: Option<String>,
    /// Whether that plan keeps state.
    pub stateful: bool,
    /// The state epoch it uses.
    pub epoch: i64,
    /// How many tasks its state is partitioned into (the inputs' partitions); `None` for
    /// workers deployed before the operator recorded it.
    pub tasks: Option<i32>,
}

/// The plan to deploy.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    /// Its fingerprint.
    pub fingerprint: &'a str,
    /// Its state fingerprint.
    pub state: &'a str,
    /// Whether it keeps state.
    pub stateful: bool,
    /// How many tasks it runs as (the most partitions of an input), when known.
    pub tasks: Option<i32>,
}

/// What to do with the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Deploy in this epoch (the running one, or the first).
    Keep(i64),
    /// Drop the state: deploy in a new epoch, reprocessing from `startFrom`.
    Reprocess(i64),
    /// Refuse the change; the message says what would be lost and what to do.
    Refuse(String),
}

/// Decides how `plan` replaces what is deployed.
pub fn decide(
    deployed: Option<&Deployed>,
    plan: Plan<'_>,
    policy: UpgradePolicy,
    changelog: &str,
) -> Decision {
    let Some(d) = deployed else {
        return Decision::Keep(0);
    };
    // State is kept per task, each task a partition of the inputs: with another count,
    // keys hash to tasks that do not hold their state (counts restart, joins miss).
    if let (Some(was), Some(now)) = (d.tasks, plan.tasks)
        && was != now
        && d.stateful
        && plan.stateful
    {
        return match policy {
            UpgradePolicy::Reprocess => Decision::Reprocess(d.epoch + 1),
            UpgradePolicy::KeepState => Decision::Refuse(format!(
                "the inputs now have {now} partitions where the running state in {changelog} \
                 is split into {was}: each key's state lives with the task of its partition, \
                 and with another count keys would reach tasks without their state. Set \
                 spec.upgradePolicy: reprocess to rebuild the state from spec.startFrom in \
                 {now} tasks; the running version keeps running meanwhile"
            )),
        };
    }
    let same_state = d.stateful && plan.stateful && d.state.as_deref() == Some(plan.state);
    if d.plan == plan.fingerprint || (!d.stateful && !plan.stateful) || same_state {
        return Decision::Keep(d.epoch);
    }
    match policy {
        UpgradePolicy::Reprocess => Decision::Reprocess(d.epoch + 1),
        UpgradePolicy::KeepState => Decision::Refuse(if d.stateful {
            format!(
                "the change replaces running plan {} whose state is in {changelog}; the new \
                 plan changes what that state holds (its aggregates, joins or table inputs, or \
                 what feeds them), so keeping it is not possible. Set spec.upgradePolicy: \
                 reprocess to drop the state and reprocess the input from spec.startFrom, or \
                 revert the change; the running version keeps running",
                short(&d.plan)
            )
        } else {
            format!(
                "the change turns stateless plan {} into a stateful one, which would need state \
                 for everything already processed. Set spec.upgradePolicy: reprocess to build it \
                 by reprocessing the input from spec.startFrom, or revert the change; the \
                 running version keeps running",
                short(&d.plan)
            )
        }),
    }
}

fn short(plan: &str) -> &str {
    &plan[..12.min(plan.len())]
}

/// The suffix epoch `epoch` adds to the group and internal topic names.
pub fn epoch_suffix(epoch: i64) -> String {
    weir_crds::names::TransformNames::epoch_suffix(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(stateful: bool) -> Deployed {
        Deployed {
            plan: "aaaaaaaaaaaaaaaa".into(),
            state: Some("s".into()),
            stateful,
            epoch: 2,
            tasks: Some(3),
        }
    }

    fn plan<'a>(fingerprint: &'a str, state: &'a str, stateful: bool) -> Plan<'a> {
        Plan {
            fingerprint,
            state,
            stateful,
            tasks: Some(3),
        }
    }

    #[test]
    fn more_input_partitions_under_running_state_are_refused_or_reprocessed() {
        let d = deployed(true);
        let wider = Plan {
            tasks: Some(6),
            ..plan(&d.plan, "s", true)
        };
        match decide(Some(&d), wider, UpgradePolicy::KeepState, "n.t.changelog") {
            Decision::Refuse(why) => {
                assert!(why.contains("6 partitions"), "{why}");
                assert!(why.contains("split into 3"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(Some(&d), wider, UpgradePolicy::Reprocess, "c"),
            Decision::Reprocess(3)
        );
        // Stateless plans, and workers deployed before the count was recorded, go on.
        assert_eq!(
            decide(
                Some(&deployed(false)),
                Plan {
                    tasks: Some(6),
                    ..plan("b", "t", false)
                },
                UpgradePolicy::KeepState,
                "c"
            ),
            Decision::Keep(2)
        );
        let unrecorded = Deployed {
            tasks: None,
            ..deployed(true)
        };
        assert_eq!(
            decide(Some(&unrecorded), wider, UpgradePolicy::KeepState, "c"),
            Decision::Keep(2)
        );
    }

    #[test]
    fn the_same_plan_or_stateless_plans_keep_the_epoch() {
        assert_eq!(
            decide(None, plan("b", "t", true), UpgradePolicy::KeepState, "c"),
            Decision::Keep(0)
        );
        let d = deployed(true);
        assert_eq!(
            decide(
                Some(&d),
                plan(&d.plan, "t", true),
                UpgradePolicy::KeepState,
                "c"
            ),
            Decision::Keep(2)
        );
        assert_eq!(
            decide(
                Some(&deployed(false)),
                plan("b", "t", false),
                UpgradePolicy::KeepState,
                "c"
            ),
            Decision::Keep(2)
        );
    }

    #[test]
    fn a_changed_plan_that_keeps_the_same_state_keeps_the_epoch_by_either_policy() {
        let d = deployed(true);
        for policy in [UpgradePolicy::KeepState, UpgradePolicy::Reprocess] {
            assert_eq!(
                decide(Some(&d), plan("b", "s", true), policy, "c"),
                Decision::Keep(2)
            );
        }
    }

    #[test]
    fn a_changed_stateful_plan_is_refused_or_reprocessed() {
        let d = deployed(true);
        match decide(
            Some(&d),
            plan("b", "t", true),
            UpgradePolicy::KeepState,
            "n.t.changelog",
        ) {
            Decision::Refuse(why) => {
                assert!(why.contains("state is in n.t.changelog"), "{why}");
                assert!(why.contains("upgradePolicy: reprocess"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(
                Some(&d),
                plan("b", "t", true),
                UpgradePolicy::Reprocess,
                "c"
            ),
            Decision::Reprocess(3)
        );
        assert!(matches!(
            decide(
                Some(&deployed(false)),
                plan("b", "t", true),
                UpgradePolicy::KeepState,
                "c"
            ),
            Decision::Refuse(_)
        ));
        // Workers deployed before the state fingerprint was recorded: only the same plan.
        let unrecorded = Deployed {
            state: None,
            ..deployed(true)
        };
        assert!(matches!(
            decide(
                Some(&unrecorded),
                plan("b", "s", true),
                UpgradePolicy::KeepState,
                "c"
            ),
            Decision::Refuse(_)
        ));
        assert_eq!(epoch_suffix(0), "");
        assert_eq!(epoch_suffix(3), ".e3");
    }
}
