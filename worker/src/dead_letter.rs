//! Dead letters: records the worker could not process, written with the reason.
//!
//! A dead letter keeps the original key, value and headers unchanged and adds headers
//! modelled on Kafka Connect's `__connect.errors.*`: where it failed, why, and where the
//! record came from.

use crate::codec::Rejection;

/// Where in the worker a record failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Stage {
    /// Decoding the key or value.
    Decode,
    /// Computing the row in the engine.
    Engine,
    /// An output row broke an expectation.
    Expectation,
}

impl Stage {
    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where a failed record came from.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (milliseconds), if it has one.
    pub timestamp: Option<i64>,
}

/// The longest error message kept in a header.
const MAX_MESSAGE: usize = 1024;

/// The `weir.*` headers of a dead letter, in order.
pub fn headers(
    stage: Stage,
    why: &Rejection,
    from: &Source<'_>,
    transform: &str,
    plan: &str,
    worker: &str,
) -> Vec<(&'static str, String)> {
    let mut message = why.message.clone();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    let mut h = vec![
        ("weir.error.stage", stage.as_str().to_owned()),
        ("weir.error.class", why.class.to_owned()),
        ("weir.error.message", message),
    ];
    if let Some(f) = &why.field {
        h.push(("weir.error.field", f.clone()));
    }
    h.extend([
        ("weir.source.topic", from.topic.to_owned()),
        ("weir.source.partition", from.partition.to_string()),
        ("weir.source.offset", from.offset.to_string()),
    ]);
    if let Some(t) = from.timestamp {
        h.push(("weir.source.timestamp", t.to_string()));
    }
    h.extend([
        ("weir.transform", transform.to_owned()),
        ("weir.plan", plan.to_owned()),
        ("weir.worker", worker.to_owned()),
    ]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_stage_class_source_and_transform_and_cap_the_message() {
        let why = Rejection {
            class: "type_mismatch",
            message: "é".repeat(600),
            field: Some("n".into()),
        };
        let from = Source {
            topic: "ns.in",
            partition: 2,
            offset: 41,
            timestamp: Some(7),
        };
        let h = headers(Stage::Decode, &why, &from, "ns/t", "abc", "w-0");
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("weir.error.stage"), Some("decode"));
        assert_eq!(get("weir.error.class"), Some("type_mismatch"));
        assert_eq!(get("weir.error.field"), Some("n"));
        assert_eq!(get("weir.source.topic"), Some("ns.in"));
        assert_eq!(get("weir.source.partition"), Some("2"));
        assert_eq!(get("weir.source.offset"), Some("41"));
        assert_eq!(get("weir.transform"), Some("ns/t"));
        assert!(get("weir.error.message").unwrap().len() <= MAX_MESSAGE);
    }
}
