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
