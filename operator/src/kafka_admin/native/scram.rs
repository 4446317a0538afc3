//! AlterUserScramCredentials and DescribeUserScramCredentials.

#![allow(unsafe_code)]

use std::time::Duration;

use rdkafka::bindings as rd;

use super::super::Admin;
use super::{NativeError, Owned, c_string, error_of, run};
use crate::kafka_admin::acl::ScramMechanism;
use rdkafka::error::RDKafkaErrorCode;

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
