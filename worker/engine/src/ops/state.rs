//! Serializing operator state for snapshots.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EngineError, Result};

/// Encodes state compactly.
pub(crate) fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(state).map_err(|e| EngineError::Snapshot(e.to_string()))
}

/// Decodes state written by [`encode`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Snapshot(e.to_string()))
}

/// A state entry as the changelog carries it: a key, and its value or `None` when the
/// entry was removed (a tombstone).
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// The keys of state entries changed since the last [`Dirty::take`], and the encoded
/// scalars last handed out. Never part of a snapshot: what it tracks is not yet written.
#[derive(Default)]
pub(crate) struct Dirty {
    keys: hashbrown::HashSet<Vec<u8>>,
    scalars_sent: Option<Vec<u8>>,
}

impl Dirty {
    /// Marks the entry with this key as changed.
    pub fn mark(&mut self, key: Vec<u8>) {
        self.keys.insert(key);
    }

    /// Hands out every changed entry, looking each value up with `value_of` (`None`
    /// when it is gone).
    pub fn take(
        &mut self,
        mut value_of: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
        out: &mut Vec<Entry>,
    ) -> Result<()> {
        for key in self.keys.drain() {
            let value = value_of(&key)?;
            out.push((key, value));
        }
        Ok(())
    }

    /// Hands out the operator's scalars (watermark, counters) under `key` when they
    /// changed since they were last handed out.
    pub fn take_scalars(&mut self, key: &[u8], scalars: Vec<u8>, out: &mut Vec<Entry>) {
        if self.scalars_sent.as_ref() != Some(&scalars) {
            out.push((key.to_vec(), Some(scalars.clone())));
            self.scalars_sent = Some(scalars);
        }
    }

    /// Forgets what changed: the state was just restored, so it is all written.
    pub fn clear(&mut self, scalars: Option<Vec<u8>>) {
        self.keys.clear();
        self.scalars_sent = scalars;
    }
}

/// A big-endian, order-preserving encoding of a signed time, for keys.
pub(crate) fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time [`time_key`] encoded, or an error when `bytes` is too short.
pub(crate) fn time_of_key(bytes: &[u8]) -> Result<i64> {
    let b: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| EngineError::Snapshot("a state key is too short".into()))?;
    Ok((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// The error for a state key an operator did not write.
pub(crate) fn unknown_key(op: &str, key: &[u8]) -> EngineError {
    EngineError::Snapshot(format!(
        "a state entry with key {key:02x?} is not one the {op} writes"
    ))
}
