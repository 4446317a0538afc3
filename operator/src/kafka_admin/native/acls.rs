//! CreateAcls, DescribeAcls and DeleteAcls.

#![allow(unsafe_code)]

use std::ffi::c_char;
use std::time::Duration;

use rdkafka::bindings as rd;

use super::super::Admin;
use super::{NativeError, Owned, c_string, error_of, run, text};
use crate::kafka_admin::acl::{Acl, Operation, Pattern, ResourceKind};

fn resource_type(kind: Option<ResourceKind>) -> rd::rd_kafka_ResourceType_t {
    use rd::rd_kafka_ResourceType_t::*;
    match kind {
        Some(ResourceKind::Topic) => RD_KAFKA_RESOURCE_TOPIC,
        Some(ResourceKind::Group) => RD_KAFKA_RESOURCE_GROUP,
        Some(ResourceKind::TransactionalId) => RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
        None => RD_KAFKA_RESOURCE_ANY,
    }
}

fn operation_type(op: Option<Operation>) -> rd::rd_kafka_AclOperation_t {
    use rd::rd_kafka_AclOperation_t::*;
    match op {
        Some(Operation::Read) => RD_KAFKA_ACL_OPERATION_READ,
        Some(Operation::Write) => RD_KAFKA_ACL_OPERATION_WRITE,
        Some(Operation::Describe) => RD_KAFKA_ACL_OPERATION_DESCRIBE,
        Some(Operation::All) => RD_KAFKA_ACL_OPERATION_ALL,
        None => RD_KAFKA_ACL_OPERATION_ANY,
    }
}

fn pattern_type(p: Option<Pattern>) -> rd::rd_kafka_ResourcePatternType_t {
    use rd::rd_kafka_ResourcePatternType_t::*;
    match p {
        Some(Pattern::Literal) => RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Some(Pattern::Prefixed) => RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
        None => RD_KAFKA_RESOURCE_PATTERN_ANY,
    }
}

/// A new ALLOW binding (`filter: false`) or a filter (`true`, where `None` fields match
/// anything), from any host.
fn binding(
    filter: bool,
    principal: &str,
    kind: Option<ResourceKind>,
    name: Option<&str>,
    pattern: Option<Pattern>,
    operation: Option<Operation>,
) -> Result<Owned<rd::rd_kafka_AclBinding_t>, NativeError> {
    let principal = c_string("the principal", principal)?;
    let name = name.map(|n| c_string("the resource name", n)).transpose()?;
    let host = c_string("the host", "*")?;
    let mut errstr = [0 as c_char; 512];
    let permission = rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW;
    let name_ptr = name.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
    // SAFETY: every string is valid for the call, which copies them; the binding is freed
    // by `Owned`.
    let acl = unsafe {
        if filter {
            rd::rd_kafka_AclBindingFilter_new(
                resource_type(kind),
                name_ptr,
                pattern_type(pattern),
                principal.as_ptr(),
                host.as_ptr(),
                operation_type(operation),
                permission,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        } else {
            rd::rd_kafka_AclBinding_new(
                resource_type(kind),
                name_ptr,
                pattern_type(pattern),
                principal.as_ptr(),
                host.as_ptr(),
                operation_type(operation),
                permission,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        }
    };
    if acl.is_null() {
        // SAFETY: librdkafka wrote a NUL-terminated message into `errstr`.
        return Err(NativeError::new(None, unsafe { text(errstr.as_ptr()) }));
    }
    Ok(Owned(acl, rd::rd_kafka_AclBinding_destroy))
}

fn new_binding(acl: &Acl) -> Result<Owned<rd::rd_kafka_AclBinding_t>, NativeError> {
    binding(
        false,
        &acl.principal,
        Some(acl.kind),
        Some(&acl.name),
        Some(acl.pattern),
        Some(acl.operation),
    )
}

/// Reads one binding librdkafka returned; `None` for one Weir does not manage (another
/// kind, operation, pattern or a DENY).
///
/// # Safety
/// `b` is a live binding owned by a result event.
unsafe fn read_binding(b: *const rd::rd_kafka_AclBinding_t) -> Option<Acl> {
    use rd::rd_kafka_AclOperation_t::*;
    use rd::rd_kafka_ResourcePatternType_t::*;
    use rd::rd_kafka_ResourceType_t::*;
    // SAFETY: as the caller promises.
    unsafe {
        if rd::rd_kafka_AclBinding_permission_type(b)
            != rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
        {
            return None;
        }
        let kind = match rd::rd_kafka_AclBinding_restype(b) {
            RD_KAFKA_RESOURCE_TOPIC => ResourceKind::Topic,
            RD_KAFKA_RESOURCE_GROUP => ResourceKind::Group,
            RD_KAFKA_RESOURCE_TRANSACTIONAL_ID => ResourceKind::TransactionalId,
            _ => return None,
        };
        let operation = match rd::rd_kafka_AclBinding_operation(b) {
            RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
            RD_KAFKA_ACL_OPERATION_WRITE => Operation::Write,
            RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
            RD_KAFKA_ACL_OPERATION_ALL => Operation::All,
            _ => return None,
        };
        let pattern = match rd::rd_kafka_AclBinding_resource_pattern_type(b) {
            RD_KAFKA_RESOURCE_PATTERN_LITERAL => Pattern::Literal,
            RD_KAFKA_RESOURCE_PATTERN_PREFIXED => Pattern::Prefixed,
            _ => return None,
        };
        Some(Acl {
            principal: text(rd::rd_kafka_AclBinding_principal(b)),
            kind,
            name: text(rd::rd_kafka_AclBinding_name(b)),
            pattern,
            operation,
        })
    }
}

/// Creates ALLOW ACLs (creating one that exists is not an error).
pub fn create_acls(client: &Admin, acls: &[Acl], timeout: Duration) -> Result<(), NativeError> {
    if acls.is_empty() {
        return Ok(());
    }
    let owned = acls
        .iter()
        .map(new_binding)
        .collect::<Result<Vec<_>, _>>()?;
    let mut ptrs: Vec<_> = owned.iter().map(|o| o.0).collect();
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
        timeout,
        // SAFETY: the bindings are live for the call, which copies them.
        |rk, options, queue| unsafe {
            rd::rd_kafka_CreateAcls(rk, ptrs.as_mut_ptr(), ptrs.len(), options, queue)
        },
        |event| {
            // SAFETY: the event is a live CreateAcls result.
            unsafe {
                let result = rd::rd_kafka_event_CreateAcls_result(event);
                if result.is_null() {
                    return Err(NativeError::new(None, "unexpected answer to CreateAcls"));
                }
                let mut count = 0usize;
                let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
                for i in 0..count {
                    if let Some(e) = error_of(rd::rd_kafka_acl_result_error(*results.add(i))) {
                        return Err(e);
                    }
                }
                Ok(())
            }
        },
    )
}

/// The ALLOW ACLs the broker holds for `principal` (`User:<name>`) that Weir manages
/// (topics, groups and transactional ids; READ, WRITE and DESCRIBE).
pub fn describe_acls(
    client: &Admin,
    principal: &str,
    timeout: Duration,
) -> Result<Vec<Acl>, NativeError> {
    let filter = binding(true, principal, None, None, None, None)?;
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
        timeout,
        // SAFETY: the filter is live for the call, which copies it.
        |rk, options, queue| unsafe { rd::rd_kafka_DescribeAcls(rk, filter.0, options, queue) },
        |event| {
            // SAFETY: the event is a live DescribeAcls result; the bindings are read
            // before it is freed.
            unsafe {
                let result = rd::rd_kafka_event_DescribeAcls_result(event);
                if result.is_null() {
                    return Err(NativeError::new(None, "unexpected answer to DescribeAcls"));
                }
                let mut count = 0usize;
                let acls = rd::rd_kafka_DescribeAcls_result_acls(result, &mut count);
                Ok((0..count)
                    .filter_map(|i| read_binding(*acls.add(i)))
                    .collect())
            }
        },
    )
}

/// Deletes exactly the given ACLs (each as a filter matching only itself).
pub fn delete_acls(client: &Admin, acls: &[Acl], timeout: Duration) -> Result<(), NativeError> {
    if acls.is_empty() {
        return Ok(());
    }
    let owned = acls
        .iter()
        .map(|a| {
            binding(
                true,
                &a.principal,
                Some(a.kind),
                Some(&a.name),
                Some(a.pattern),
                Some(a.operation),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ptrs: Vec<_> = owned.iter().map(|o| o.0).collect();
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DELETEACLS,
        timeout,
        // SAFETY: the filters are live for the call, which copies them.
        |rk, options, queue| unsafe {
            rd::rd_kafka_DeleteAcls(rk, ptrs.as_mut_ptr(), ptrs.len(), options, queue)
        },
        |event| {
            // SAFETY: the event is a live DeleteAcls result.
            unsafe {
                let result = rd::rd_kafka_event_DeleteAcls_result(event);
                if result.is_null() {
                    return Err(NativeError::new(None, "unexpected answer to DeleteAcls"));
                }
                let mut count = 0usize;
                let responses = rd::rd_kafka_DeleteAcls_result_responses(result, &mut count);
                for i in 0..count {
                    let e = rd::rd_kafka_DeleteAcls_result_response_error(*responses.add(i));
                    if let Some(e) = error_of(e) {
                        return Err(e);
                    }
                }
                Ok(())
            }
        },
    )
}
