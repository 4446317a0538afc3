//! Exactly the ACLs a plan needs, as a pure function of its topics and names.

use std::collections::BTreeSet;

use weir_crds::names::TransformNames;

use crate::kafka_admin::acl::{Acl, Operation, Pattern, ResourceKind};

/// The topics and names one deployed plan touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTopics {
    /// Input topics (from the DataStreams' status, each granted).
    pub inputs: Vec<String>,
    /// The output topic.
    pub output: String,
    /// Dead letters, changelog, repartition.
    pub internal: Vec<String>,
}

/// The ACLs `principal` needs to run a plan over `topics` under `names` (and `worker`, the
/// prefix its pods' names start with).
pub fn desired_acls(
    principal: &str,
    names: &TransformNames,
    worker_prefix: &str,
    topics: &PlanTopics,
) -> BTreeSet<Acl> {
    let acl = |kind, name: &str, pattern, operation| Acl {
        principal: principal.to_owned(),
        kind,
        name: name.to_owned(),
        pattern,
        operation,
    };
    let mut out = BTreeSet::new();
    let topic = |out: &mut BTreeSet<Acl>, name: &str, ops: &[Operation]| {
        for op in ops {
            out.insert(acl(ResourceKind::Topic, name, Pattern::Literal, *op));
        }
    };
    use Operation::{Describe, Read, Write};
    for input in &topics.inputs {
        topic(&mut out, input, &[Read, Describe]);
    }
    topic(&mut out, &topics.output, &[Write, Describe]);
    for internal in &topics.internal {
        topic(&mut out, internal, &[Read, Write, Describe]);
    }
    for group in [names.group_id(), names.restore_group_id()] {
        out.insert(acl(ResourceKind::Group, &group, Pattern::Literal, Read));
    }
    // Transactional ids are `<prefix><pod name>`; pod names start with the workload's.
    let txn = format!("{}{worker_prefix}", names.transactional_id_prefix());
    for op in [Write, Describe] {
        out.insert(acl(
            ResourceKind::TransactionalId,
            &txn,
            Pattern::Prefixed,
            op,
        ));
    }
    out
}

/// The ACLs of `live` to keep while the Transform may read nothing: all but the READ and
/// DESCRIBE ACLs on topics that are neither its internal topics (under `names.base()`) nor
/// its output (a topic it may WRITE).
pub fn without_inputs(live: &BTreeSet<Acl>, names: &TransformNames) -> BTreeSet<Acl> {
    let internal = format!("{}.", names.base());
    let written: BTreeSet<&str> = live
        .iter()
        .filter(|a| a.kind == ResourceKind::Topic && a.operation == Operation::Write)
        .map(|a| a.name.as_str())
        .collect();
    live.iter()
        .filter(|a| {
            a.kind != ResourceKind::Topic
                || a.name.starts_with(&internal)
                || written.contains(a.name.as_str())
        })
        .cloned()
        .collect()
}

/// The ACLs of `desired` no ACL of `live` covers, each as a person reads it.
pub fn missing(live: &BTreeSet<Acl>, desired: &BTreeSet<Acl>) -> Vec<String> {
    desired
        .iter()
        .filter(|want| !live.iter().any(|have| have.covers(want)))
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::principal::managed_principal;

    fn names() -> TransformNames {
        TransformNames::new("team-a", "copy", 0)
    }

    fn topics() -> PlanTopics {
        PlanTopics {
            inputs: vec!["team-b.pay".into(), "team-a.src".into()],
            output: "team-a.out".into(),
            internal: vec![
                "team-a.copy.dead-letters".into(),
                "team-a.copy.changelog".into(),
            ],
        }
    }

    #[test]
    fn a_plan_gets_exactly_the_acls_it_needs() {
        let p = managed_principal(&names());
        assert_eq!(p, "User:weir.team-a.copy");
        let acls = desired_acls(&p, &names(), "copy-worker-", &topics());
        let shown: Vec<String> = acls.iter().map(ToString::to_string).collect();
        for want in [
            "READ on topic team-b.pay for User:weir.team-a.copy",
            "DESCRIBE on topic team-b.pay for User:weir.team-a.copy",
            "WRITE on topic team-a.out for User:weir.team-a.copy",
            "WRITE on topic team-a.copy.changelog for User:weir.team-a.copy",
            "READ on group weir.team-a.copy for User:weir.team-a.copy",
            "READ on group weir.team-a.copy.restore for User:weir.team-a.copy",
            "WRITE on transactional id weir.team-a.copy.copy-worker- (prefix) for User:weir.team-a.copy",
        ] {
            assert!(
                shown.iter().any(|s| s == want),
                "{want} missing from {shown:#?}"
            );
        }
        // Never WRITE on an input, never READ on the output.
        assert!(
            !shown
                .iter()
                .any(|s| s.starts_with("WRITE on topic team-b.pay"))
        );
        assert!(
            !shown
                .iter()
                .any(|s| s.starts_with("READ on topic team-a.out"))
        );
        // Nothing is a wildcard and only the transactional ids go by prefix.
        assert!(acls.iter().all(|a| a.name != "*"));
        assert_eq!(
            acls.iter()
                .filter(|a| a.pattern == Pattern::Prefixed)
                .count(),
            2
        );
        assert_eq!(acls.len(), 4 + 2 + 6 + 2 + 2);
    }

    #[test]
    fn stopping_the_reader_keeps_only_its_own_topics() {
        let p = managed_principal(&names());
        let live = desired_acls(&p, &names(), "copy-worker-", &topics());
        let kept = without_inputs(&live, &names());
        assert!(
            kept.iter()
                .all(|a| a.name != "team-b.pay" && a.name != "team-a.src")
        );
        assert!(kept.iter().any(|a| a.name == "team-a.out"));
        assert!(kept.iter().any(|a| a.name == "team-a.copy.changelog"));
        assert_eq!(live.len() - kept.len(), 4);
    }

    #[test]
    fn missing_acls_are_named() {
        let p = "User:app".to_owned();
        let desired = desired_acls(&p, &names(), "copy-worker-", &topics());
        let mut live = desired.clone();
        live.retain(|a| !(a.name == "team-b.pay" && a.operation == Operation::Read));
        // DESCRIBE is implied by READ elsewhere, but not here: both are named.
        let m = missing(&live, &desired);
        assert_eq!(m, vec!["READ on topic team-b.pay for User:app".to_owned()]);
    }
}
