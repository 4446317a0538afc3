//! Kafka ACLs and SCRAM credentials as the operator manages them: each Transform's
//! principal gets exactly the ACLs its plan needs ([`crate::transform::principal`] says
//! which), and [`AclDiff`] says what to create and delete to get there.

use std::collections::BTreeSet;
use std::fmt;

/// The kind of resource an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Topic => "topic",
            Self::Group => "group",
            Self::TransactionalId => "transactional id",
        })
    }
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// The name exactly.
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// An operation an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Read records (topics) or join and commit (groups).
    Read,
    /// Write records (topics) or use (transactional ids).
    Write,
    /// Read metadata.
    Describe,
    /// Every operation (as an administrator may grant a team on its prefix).
    All,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::Describe => "DESCRIBE",
            Self::All => "ALL",
        })
    }
}

/// One ALLOW ACL for a principal, from any host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    /// The principal, `User:<name>`.
    pub principal: String,
    /// The kind of resource.
    pub kind: ResourceKind,
    /// The resource name (or prefix).
    pub name: String,
    /// How the name matches.
    pub pattern: Pattern,
    /// The operation allowed.
    pub operation: Operation,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.pattern {
            Pattern::Literal => "",
            Pattern::Prefixed => " (prefix)",
        };
        write!(
            f,
            "{} on {} {}{prefix} for {}",
            self.operation, self.kind, self.name, self.principal
        )
    }
}

impl Acl {
    /// Whether this ACL (one the broker holds) allows what `wanted` asks: the same
    /// principal, kind and operation (`ALL` allows each; `READ` and `WRITE` also allow
    /// `DESCRIBE`, as Kafka implies), and a name that matches literally or by prefix.
    pub fn covers(&self, wanted: &Acl) -> bool {
        let operation = self.operation == wanted.operation
            || self.operation == Operation::All
            || (wanted.operation == Operation::Describe
                && matches!(self.operation, Operation::Read | Operation::Write));
        let name = match (self.pattern, wanted.pattern) {
            (Pattern::Literal, Pattern::Literal) => self.name == wanted.name,
            (Pattern::Prefixed, _) => wanted.name.starts_with(&self.name),
            (Pattern::Literal, Pattern::Prefixed) => false,
        } || self.name == "*";
        self.principal == wanted.principal && self.kind == wanted.kind && operation && name
    }
}

/// What to change so that a principal holds exactly `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclDiff {
    /// ACLs to create.
    pub create: Vec<Acl>,
    /// ACLs to delete (Weir's own, no longer needed).
    pub delete: Vec<Acl>,
}

impl AclDiff {
    /// The difference between what the broker holds and what is wanted.
    pub fn between(live: &BTreeSet<Acl>, desired: &BTreeSet<Acl>) -> Self {
        Self {
            create: desired.difference(live).cloned().collect(),
            delete: live.difference(desired).cloned().collect(),
        }
    }

    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }
}

/// The SCRAM mechanisms a credential can be made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(name: &str, pattern: Pattern, operation: Operation) -> Acl {
        Acl {
            principal: "User:weir.a.t".into(),
            kind: ResourceKind::Topic,
            name: name.into(),
            pattern,
            operation,
        }
    }

    #[test]
    fn prefixed_and_implied_acls_cover_what_a_plan_needs() {
        let wanted = acl("a.in", Pattern::Literal, Operation::Describe);
        assert!(acl("a.in", Pattern::Literal, Operation::Read).covers(&wanted));
        assert!(acl("a.", Pattern::Prefixed, Operation::Describe).covers(&wanted));
        assert!(!acl("a.inx", Pattern::Literal, Operation::Read).covers(&wanted));
        assert!(!acl("b.", Pattern::Prefixed, Operation::Read).covers(&wanted));
        let read = acl("a.in", Pattern::Literal, Operation::Read);
        assert!(!acl("a.in", Pattern::Literal, Operation::Write).covers(&read));
        assert!(acl("*", Pattern::Literal, Operation::Read).covers(&read));
        assert!(acl("a.", Pattern::Prefixed, Operation::All).covers(&read));
    }

    #[test]
    fn the_diff_creates_what_is_missing_and_deletes_what_is_left() {
        let live: BTreeSet<Acl> = [
            acl("a.in", Pattern::Literal, Operation::Read),
            acl("a.old", Pattern::Literal, Operation::Read),
        ]
        .into();
        let desired: BTreeSet<Acl> = [
            acl("a.in", Pattern::Literal, Operation::Read),
            acl("a.out", Pattern::Literal, Operation::Write),
        ]
        .into();
        let diff = AclDiff::between(&live, &desired);
        assert_eq!(
            diff.create,
            vec![acl("a.out", Pattern::Literal, Operation::Write)]
        );
        assert_eq!(
            diff.delete,
            vec![acl("a.old", Pattern::Literal, Operation::Read)]
        );
        assert!(AclDiff::between(&desired, &desired).is_empty());
    }
}
