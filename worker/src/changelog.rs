//! A task's state in the Transform's changelog topic.
//!
//! Partition `p` of the changelog holds task `p`'s state: one record per engine state
//! entry (key `[0x00] ++ entry key`, a tombstone when the entry is gone) and one meta
//! record (key `[0x01]`) naming the plan and the input offsets the state reflects. Both
//! are written in the same transaction as the output and the consumed offsets, so the
//! state read back always matches the committed offsets. The topic is compacted: the last
//! record per key is the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::watermark::Mark;

/// The first byte of an engine state entry's key.
pub const ENTRY: u8 = 0x00;
/// The key of the meta record.
pub const META_KEY: [u8; 1] = [0x01];

/// What a task's state reflects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// The plan that wrote the state.
    pub fingerprint: String,
    /// What that plan's state means ([`weir_sql::CompiledTransform::state_fingerprint`]):
    /// a plan with the same one can go on from this state. Empty in state written before
    /// Weir recorded it, where only the same plan can.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Per input topic, the next offset to read in this task's partition.
    pub offsets: BTreeMap<String, i64>,
    /// How many commits wrote this task's state.
    pub commits: u64,
    /// A task behind a repartition topic: what each upstream (input, partition) last
    /// said about its event time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watermarks: Vec<(usize, i32, Mark)>,
}

impl TaskMeta {
    /// Whether a plan with fingerprint `plan` and state fingerprint `state` can go on
    /// from this state.
    pub fn fits(&self, plan: &str, state: &str) -> bool {
        if self.state.is_empty() {
            self.fingerprint == plan
        } else {
            self.state == state
        }
    }
}

/// The changelog key of an engine state entry.
pub fn entry_key(engine_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + engine_key.len());
    k.push(ENTRY);
    k.extend_from_slice(engine_key);
    k
}

/// What a changelog record is.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// An engine state entry (its engine key) and its value; `None` deletes it.
    Entry(&'a [u8], Option<&'a [u8]>),
    /// The task's meta record.
    Meta(TaskMeta),
}

/// Reads one changelog record; an error names what is wrong.
pub fn parse<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Result<Record<'a>, String> {
    match key {
        Some([ENTRY, rest @ ..]) => Ok(Record::Entry(rest, value)),
        Some(k) if k == META_KEY => {
            let v = value.ok_or("the meta record was deleted")?;
            serde_json::from_slice(v)
                .map(Record::Meta)
                .map_err(|e| format!("the meta record is not readable: {e}"))
        }
        Some(k) => Err(format!(
            "a record with key {k:02x?} is not a Weir state record"
        )),
        None => Err("a record without a key is not a Weir state record".into()),
    }
}

/// The meta record's value.
pub fn meta_value(meta: &TaskMeta) -> Vec<u8> {
    serde_json::to_vec(meta).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_meta_read_back_as_written() {
        let k = entry_key(b"\x00\x01abc");
        assert_eq!(
            parse(Some(&k), Some(b"v")).unwrap(),
            Record::Entry(b"\x00\x01abc", Some(b"v"))
        );
        assert_eq!(
            parse(Some(&k), None).unwrap(),
            Record::Entry(b"\x00\x01abc", None)
        );
        let meta = TaskMeta {
            fingerprint: "f".into(),
            state: "s".into(),
            offsets: [("t".to_owned(), 5)].into(),
            commits: 3,
            watermarks: vec![(
                0,
                2,
                crate::watermark::Mark {
                    watermark: weir_engine::Watermark::at(7),
                    idle: true,
                },
            )],
        };
        let v = meta_value(&meta);
        assert_eq!(
            parse(Some(&META_KEY), Some(&v)).unwrap(),
            Record::Meta(meta.clone())
        );
        assert!(meta.fits("other plan", "s"));
        assert!(!meta.fits("f", "other state"));
        // State written before the state fingerprint was recorded fits only its own plan.
        let old: TaskMeta = serde_json::from_str(r#"{"fingerprint":"f","offsets":{},"commits":1}"#)
            .expect("old meta");
        assert!(old.fits("f", "s") && !old.fits("g", "s"));
        assert!(parse(Some(b"\x07"), Some(b"x")).is_err());
        assert!(parse(None, Some(b"x")).is_err());
    }
}
