//! The Kafka admin calls rust-rdkafka does not wrap, made through librdkafka's C API:
//! DescribeTopics (a topic's id, partitions and replicas), IncrementalAlterConfigs
//! (change or remove one config key, leave the others alone), CreateAcls, DescribeAcls and
//! DeleteAcls (a Transform principal's ACLs), and AlterUserScramCredentials and
//! DescribeUserScramCredentials (its SCRAM credential).
//!
//! [`topics`] holds the topic calls, [`acls`] the ACL calls, [`scram`] the SCRAM calls;
//! this module what they share: running one call, its errors, and the client's main queue.
//!
//! This is the only unsafe code in Weir. Each call runs on a queue of its own, waits for
//! its one result event, reads it before anything is freed, and frees everything it created
//! on every path ([`Owned`]). The calls block: run them off the async runtime.

#![allow(unsafe_code)]

mod acls;
mod scram;
mod topics;

use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::error::RDKafkaErrorCode;

use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;

use super::Admin;

pub use acls::{create_acls, delete_acls, describe_acls};
pub use scram::{alter_scram, has_scram};
pub use topics::{alter_topic_configs, describe_topic};

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
