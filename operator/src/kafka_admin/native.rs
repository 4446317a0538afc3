//! Two Kafka admin calls rust-rdkafka does not wrap, made through librdkafka's C API:
//! DescribeTopics (a topic's id, partitions and replicas) and IncrementalAlterConfigs
//! (change or remove one config key, leave the others alone).
//!
//! This is the only unsafe code in Weir. Each call runs on a queue of its own, waits for
//! its one result event, reads it before anything is freed, and frees everything it created
//! on every path ([`Owned`]). The calls block: run them off the async runtime.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;

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
    client: &AdminClient<DefaultClientContext>,
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
    client: &AdminClient<DefaultClientContext>,
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
    client: &AdminClient<DefaultClientContext>,
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
