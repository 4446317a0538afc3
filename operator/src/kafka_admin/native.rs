//! The Kafka admin calls rust-rdkafka does not wrap, made through librdkafka's C API:
//! DescribeTopics (a topic's id, partitions and replicas), IncrementalAlterConfigs
//! (change or remove one config key, leave the others alone), CreateAcls, DescribeAcls and
//! DeleteAcls (a Transform principal's ACLs), and AlterUserScramCredentials and
//! DescribeUserScramCredentials (its SCRAM credential).
//!
//! This is the only unsafe code in Weir. Each call runs on a queue of its own, waits for
//! its one result event, reads it before anything is freed, and frees everything it created
//! on every path ([`Owned`]). The calls block: run them off the async runtime.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;

use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;

use super::Admin;
use super::acl::{Acl, Operation, Pattern, ResourceKind, ScramMechanism};

/// What a failed call reports: librdkafka's error code (if it gave one) and message.
#[derive(Debug, Clone)]
pub struct NativeError {
    /// The error code; `None` for a timeout or a malformed request.
    pub code: Option<RDKafkaErrorCode>,
    /// What happened.
    pub message: String,
}

impl NativeError {
    fn new(code: Option<RDKafkaErrorCode>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A topic as DescribeTopics reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Kafka's topic id (a UUID, base64 as Kafka's tools print it): a topic deleted and
    /// created again under the same name has a new one.
    pub id: String,
    /// The number of partitions.
    pub partitions: i32,
    /// The replication factor (replicas of the first partition).
    pub replication_factor: i32,
}

/// One per-key config change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Sets the key on the topic.
    Set(String, String),
    /// Removes the key from the topic (it inherits the broker's default again).
    Delete(String),
}

/// Something librdkafka allocated, with the function that frees it.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching librdkafka constructor and is
            // freed once, here.
            unsafe { (self.1)(self.0) }
        }
    }
}

fn c_string(what: &str, s: &str) -> Result<CString, NativeError> {
    CString::new(s).map_err(|_| NativeError::new(None, format!("{what} contains a NUL byte")))
}

/// Reads a C string librdkafka owns; empty for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives the call.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: as the caller promises.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Runs one admin operation on a queue of its own and reads its result event with `read`.
fn run<T>(
    client: &Admin,
    op: rd::rd_kafka_admin_op_t,
    timeout: Duration,
    start: impl FnOnce(
        *mut rd::rd_kafka_t,
        *const rd::rd_kafka_AdminOptions_t,
        *mut rd::rd_kafka_queue_t,
    ),
    read: impl FnOnce(*mut rd::rd_kafka_event_t) -> Result<T, NativeError>,
) -> Result<T, NativeError> {
    let rk = client.inner().native_ptr();
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `rk` is a live client (the AdminClient is borrowed for the whole call); every
    // object created here is freed by its `Owned` after the event has been read.
    unsafe {
        let queue = Owned(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let options = Owned(
            rd::rd_kafka_AdminOptions_new(rk, op),
            rd::rd_kafka_AdminOptions_destroy,
        );
        if queue.0.is_null() || options.0.is_null() {
            return Err(NativeError::new(
                None,
                "librdkafka could not allocate a request",
            ));
        }
        let mut errstr = [0 as c_char; 512];
        let err = rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if err != NO_ERROR {
            return Err(NativeError::new(Some(err.into()), text(errstr.as_ptr())));
        }
        start(rk, options.0, queue.0);
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, ms.saturating_add(2_000)),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(NativeError::new(
                None,
                format!("no answer within {}", humantime::format_duration(timeout)),
            ));
        }
        let err = rd::rd_kafka_event_error(event.0);
        if err != NO_ERROR {
            let message = text(rd::rd_kafka_event_error_string(event.0));
            return Err(NativeError::new(Some(err.into()), message));
        }
        read(event.0)
    }
}

/// Describes one topic: `None` if it does not exist.
pub fn describe_topic(
    client: &Admin,
    name: &str,
    timeout: Duration,
) -> Result<Option<TopicDescription>, NativeError> {
    let topic = c_string("the topic name", name)?;
    let mut names = [topic.as_ptr()];
    // SAFETY: `names` holds one valid C string for the duration of the call; the collection
    // copies it and is freed by `Owned`.
    let collection = unsafe {
        Owned(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len()),
            rd::rd_kafka_TopicCollection_destroy,
        )
    };
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        timeout,
        // SAFETY: the arguments are live for the call (see `run`).
        |rk, options, queue| unsafe {
            rd::rd_kafka_DescribeTopics(rk, collection.0, options, queue)
        },
        |event| {
            // SAFETY: the event is a live DescribeTopics result; everything read from it is
            // copied out before it is freed.
            unsafe {
                let result = rd::rd_kafka_event_DescribeTopics_result(event);
                if result.is_null() {
                    return Err(NativeError::new(
                        None,
                        "unexpected answer to DescribeTopics",
                    ));
                }
                let mut count = 0usize;
                let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
                if count == 0 || topics.is_null() {
                    return Ok(None);
                }
                let topic = *topics;
                let error = rd::rd_kafka_TopicDescription_error(topic);
                if !error.is_null() {
                    let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
                    if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                        return Ok(None);
                    }
                    return Err(NativeError::new(
                        Some(code),
                        text(rd::rd_kafka_error_string(error)),
                    ));
                }
                let mut partitions = 0usize;
                let infos = rd::rd_kafka_TopicDescription_partitions(topic, &mut partitions);
                let mut replicas = 0usize;
                if partitions > 0 && !infos.is_null() {
                    rd::rd_kafka_TopicPartitionInfo_replicas(*infos, &mut replicas);
                }
                let id = rd::rd_kafka_TopicDescription_topic_id(topic);
                let id = if id.is_null() {
                    String::new()
                } else {
                    text(rd::rd_kafka_Uuid_base64str(id))
                };
                Ok(Some(TopicDescription {
                    id,
                    partitions: i32::try_from(partitions).unwrap_or(i32::MAX),
                    replication_factor: i32::try_from(replicas).unwrap_or(i32::MAX),
                }))
            }
        },
    )
}

/// Applies per-key config changes to one topic; keys not named are left as they are.
pub fn alter_topic_configs(
    client: &Admin,
    name: &str,
    changes: &[ConfigChange],
    timeout: Duration,
) -> Result<(), NativeError> {
    let topic = c_string("the topic name", name)?;
    // SAFETY: the name is a valid C string; the resource is freed by `Owned`.
    let resource = unsafe {
        Owned(
            rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                topic.as_ptr(),
            ),
            rd::rd_kafka_ConfigResource_destroy,
        )
    };
    for change in changes {
        use rd::rd_kafka_AlterConfigOpType_t::*;
        let (key, op, value) = match change {
            ConfigChange::Set(k, v) => (k, RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET, Some(v)),
            ConfigChange::Delete(k) => (k, RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE, None),
        };
        let key = c_string("a config key", key)?;
        let value = value.map(|v| c_string("a config value", v)).transpose()?;
        // SAFETY: the strings are valid for the call, which copies them; an error returned
        // is ours to free.
        unsafe {
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource.0,
                key.as_ptr(),
                op,
                value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
            );
            if !error.is_null() {
                let error = Owned(error, rd::rd_kafka_error_destroy);
                let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error.0));
                return Err(NativeError::new(
                    Some(code),
                    text(rd::rd_kafka_error_string(error.0)),
                ));
            }
        }
    }
    let mut resources = [resource.0];
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        timeout,
        // SAFETY: the resource array is live for the call, which copies it.
        |rk, options, queue| unsafe {
            rd::rd_kafka_IncrementalAlterConfigs(
                rk,
                resources.as_mut_ptr(),
                resources.len(),
                options,
                queue,
            )
        },
        |event| {
            // SAFETY: the event is a live IncrementalAlterConfigs result.
            unsafe {
                let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
                if result.is_null() {
                    return Err(NativeError::new(
                        None,
                        "unexpected answer to IncrementalAlterConfigs",
                    ));
                }
                let mut count = 0usize;
                let resources =
                    rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
                for i in 0..count {
                    let resource = *resources.add(i);
                    let err = rd::rd_kafka_ConfigResource_error(resource);
                    if err != NO_ERROR {
                        let message = text(rd::rd_kafka_ConfigResource_error_string(resource));
                        return Err(NativeError::new(Some(err.into()), message));
                    }
                }
                Ok(())
            }
        },
    )
}

/// Reads and frees nothing: the code and message of an error librdkafka owns; `None` for
/// NULL or `NO_ERROR` (no error).
///
/// # Safety
/// `error` is NULL or a live `rd_kafka_error_t` that outlives the call.
unsafe fn error_of(error: *const rd::rd_kafka_error_t) -> Option<NativeError> {
    if error.is_null() {
        return None;
    }
    // SAFETY: as the caller promises.
    unsafe {
        // Some results carry an error object on success too, with code NO_ERROR.
        if rd::rd_kafka_error_code(error) == NO_ERROR {
            return None;
        }
        let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
        Some(NativeError::new(
            Some(code),
            text(rd::rd_kafka_error_string(error)),
        ))
    }
}

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

fn scram_type(m: ScramMechanism) -> rd::rd_kafka_ScramMechanism_t {
    match m {
        ScramMechanism::Sha256 => rd::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_256,
        ScramMechanism::Sha512 => rd::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
    }
}

/// Creates or replaces `user`'s SCRAM credential for `mechanism` (`Some(password)`), or
/// deletes it (`None`; deleting one that does not exist is not an error).
pub fn alter_scram(
    client: &Admin,
    user: &str,
    mechanism: ScramMechanism,
    password: Option<&str>,
    timeout: Duration,
) -> Result<(), NativeError> {
    let name = c_string("the user name", user)?;
    // SAFETY: the name and password are valid for the call, which copies them (librdkafka
    // draws the salt itself when none is given); the alteration is freed by `Owned`.
    let alteration = unsafe {
        let ptr = match password {
            Some(p) => rd::rd_kafka_UserScramCredentialUpsertion_new(
                name.as_ptr(),
                scram_type(mechanism),
                8192,
                p.as_ptr(),
                p.len(),
                std::ptr::null(),
                0,
            ),
            None => {
                rd::rd_kafka_UserScramCredentialDeletion_new(name.as_ptr(), scram_type(mechanism))
            }
        };
        Owned(ptr, rd::rd_kafka_UserScramCredentialAlteration_destroy)
    };
    if alteration.0.is_null() {
        return Err(NativeError::new(
            None,
            "librdkafka could not make the credential",
        ));
    }
    let mut ptrs = [alteration.0];
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
        timeout,
        // SAFETY: the alteration is live for the call, which copies it.
        |rk, options, queue| unsafe {
            rd::rd_kafka_AlterUserScramCredentials(
                rk,
                ptrs.as_mut_ptr(),
                ptrs.len(),
                options,
                queue,
            )
        },
        |event| {
            // SAFETY: the event is a live AlterUserScramCredentials result.
            unsafe {
                let result = rd::rd_kafka_event_AlterUserScramCredentials_result(event);
                if result.is_null() {
                    return Err(NativeError::new(
                        None,
                        "unexpected answer to AlterUserScramCredentials",
                    ));
                }
                let mut count = 0usize;
                let responses =
                    rd::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut count);
                for i in 0..count {
                    let e = rd::rd_kafka_AlterUserScramCredentials_result_response_error(
                        *responses.add(i),
                    );
                    if let Some(e) = error_of(e) {
                        // Deleting a credential that is not there is what was wanted.
                        if password.is_none() && e.code == Some(RDKafkaErrorCode::ResourceNotFound)
                        {
                            continue;
                        }
                        return Err(e);
                    }
                }
                Ok(())
            }
        },
    )
}

/// Whether `user` has a SCRAM credential for `mechanism`.
pub fn has_scram(
    client: &Admin,
    user: &str,
    mechanism: ScramMechanism,
    timeout: Duration,
) -> Result<bool, NativeError> {
    let name = c_string("the user name", user)?;
    let mut users = [name.as_ptr()];
    run(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEUSERSCRAMCREDENTIALS,
        timeout,
        // SAFETY: the name is live for the call, which copies it.
        |rk, options, queue| unsafe {
            rd::rd_kafka_DescribeUserScramCredentials(
                rk,
                users.as_mut_ptr(),
                users.len(),
                options,
                queue,
            )
        },
        |event| {
            // SAFETY: the event is a live DescribeUserScramCredentials result.
            unsafe {
                let result = rd::rd_kafka_event_DescribeUserScramCredentials_result(event);
                if result.is_null() {
                    return Err(NativeError::new(
                        None,
                        "unexpected answer to DescribeUserScramCredentials",
                    ));
                }
                let mut count = 0usize;
                let descriptions = rd::rd_kafka_DescribeUserScramCredentials_result_descriptions(
                    result, &mut count,
                );
                for i in 0..count {
                    let d = *descriptions.add(i);
                    if let Some(e) = error_of(rd::rd_kafka_UserScramCredentialsDescription_error(d))
                    {
                        if e.code == Some(RDKafkaErrorCode::ResourceNotFound) {
                            return Ok(false);
                        }
                        return Err(e);
                    }
                    let infos =
                        rd::rd_kafka_UserScramCredentialsDescription_scramcredentialinfo_count(d);
                    for j in 0..infos {
                        let info =
                            rd::rd_kafka_UserScramCredentialsDescription_scramcredentialinfo(d, j);
                        if rd::rd_kafka_ScramCredentialInfo_mechanism(info) == scram_type(mechanism)
                        {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
        },
    )
}

/// What librdkafka put on the client's main queue: a log line (its syslog level) or an
/// error. rust-rdkafka's admin client never reads that queue, so without this the client's
/// reasons for failing (a refused password, an untrusted certificate) would be lost.
pub enum MainEvent {
    /// A log line: level (0 emergency … 7 debug), facility, message.
    Log(i32, String, String),
    /// An error: its message.
    Error(String),
}

/// Waits up to `timeout` for one event on the client's main queue; `None` if none came.
pub fn poll_main(client: &Admin, timeout: Duration) -> Option<MainEvent> {
    let rk = client.inner().native_ptr();
    let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `rk` is a live client (borrowed for the call); the queue handle and the event
    // are freed by `Owned`; the event's strings are copied before it is freed.
    unsafe {
        let queue = Owned(rd::rd_kafka_queue_get_main(rk), rd::rd_kafka_queue_destroy);
        if queue.0.is_null() {
            return None;
        }
        let event = Owned(
            rd::rd_kafka_queue_poll(queue.0, ms),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return None;
        }
        match rd::rd_kafka_event_type(event.0) {
            rd::RD_KAFKA_EVENT_LOG => {
                let (mut fac, mut text_ptr, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                if rd::rd_kafka_event_log(event.0, &mut fac, &mut text_ptr, &mut level) == 0 {
                    Some(MainEvent::Log(level, text(fac), text(text_ptr)))
                } else {
                    None
                }
            }
            rd::RD_KAFKA_EVENT_ERROR => Some(MainEvent::Error(text(
                rd::rd_kafka_event_error_string(event.0),
            ))),
            _ => None,
        }
    }
}
