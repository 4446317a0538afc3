//! Kafka records to Arrow change batches and back, as JSON.
//!
//! Decoding has a fast path and a slow path. The fast path feeds every payload of a poll
//! batch to one arrow-json decoder. Any error there — a syntax error, a type conflict
//! (which arrow-json reports for the whole batch), a truncated payload — sends the batch
//! down the slow path: one decoder per record, so each bad record is named and set aside
//! with its reason and every good record is kept. One bad record never fails or corrupts
//! its batch.
//!
//! A record with no value (a tombstone) deletes its key from a table input: the key is
//! decoded by the table's key fields alone. On an event stream a tombstone is rejected.
//!
//! `decode` reads records into change batches ([`Decoder`]); `encode` writes change
//! batches as records ([`Encoder`]).

mod decode;
mod encode;

pub use decode::{Decoded, Decoder, Payload};
pub use encode::{Encoded, Encoder, OutputRecord};

/// Why a record was set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// A stable, low-cardinality class: `json_syntax`, `type_mismatch`, `missing_field`,
    /// `too_large`, `time_out_of_range`, `unexpected_tombstone`, `engine`, `late`,
    /// `expectation_failed`, `not_a_weir_record`.
    pub class: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The field at fault, when one is.
    pub field: Option<String>,
}

impl Rejection {
    fn new(class: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            field: None,
        }
    }

    /// Classifies an arrow-json error.
    fn from_json(e: &arrow::error::ArrowError) -> Self {
        let message = match e {
            arrow::error::ArrowError::JsonError(m) => m.clone(),
            other => other.to_string(),
        };
        if message.contains("unmasked nulls in non-nullable") {
            return Self::new("missing_field", message);
        }
        if let Some(field) = between(&message, "whilst decoding field '", "'") {
            return Self {
                class: "type_mismatch",
                message,
                field: Some(field),
            };
        }
        Self::new("json_syntax", message)
    }
}

fn between(s: &str, open: &str, close: &str) -> Option<String> {
    let at = s.find(open)? + open.len();
    let len = s[at..].find(close)?;
    Some(s[at..at + len].to_owned())
}
