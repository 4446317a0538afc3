//! DescribeTopics and IncrementalAlterConfigs.

#![allow(unsafe_code)]

use std::time::Duration;

use rdkafka::bindings as rd;

use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;

use super::super::Admin;
use rdkafka::error::RDKafkaErrorCode;

use super::{ConfigChange, NativeError, Owned, TopicDescription, c_string, run, text};

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
