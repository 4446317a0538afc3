//! The repartition stage: routing every input record to the partition of the internal
//! repartition topic its operators' key picks, and carrying event time across.
//!
//! When a GROUP BY or a join key is not the inputs' key ([`Partitioning::Repartition`]),
//! a routing task per input partition forwards each record — its original key, value and
//! headers, plus a `weir.input` header naming its DataStream — to partition
//! `hash(key columns) mod n` of `<namespace>.<transform>.repartition`, in the same
//! transaction as its consumed offset. The stateful tasks then read the repartition topic,
//! one task per partition, so equal keys meet in one engine.
//!
//! Watermarks cannot be read off the records of a repartition partition, which mixes
//! every upstream partition. So each routing task also writes a watermark record (header
//! `weir.control: watermark`) to every repartition partition when its watermark moves or
//! it becomes idle; a stateful task advances its engine on the minimum over the upstream
//! partitions that are not idle ([`crate::watermark::Progress`]).

use anyhow::{Context as _, anyhow};
use arrow::array::AsArray;
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};
use weir_sql::CompiledTransform;
use weir_sql::partitioning::Partitioning;

use crate::watermark::Mark;

/// The header naming the DataStream (`namespace/name`) a repartitioned record came from.
pub const INPUT_HEADER: &str = "weir.input";
/// The header marking a watermark record.
pub const CONTROL_HEADER: &str = "weir.control";
/// The value of [`CONTROL_HEADER`] on a watermark record.
pub const WATERMARK: &str = "watermark";

/// How records are routed to the repartition topic.
#[derive(Debug, Clone)]
pub struct Route {
    /// The repartition topic.
    pub topic: String,
    /// Its partition count: the number of stateful tasks.
    pub partitions: i32,
    /// Per input, the columns (indices into the input's schema) whose values pick the
    /// partition; `None` for an input no stateful operator reads.
    keys: Vec<Option<Vec<usize>>>,
}

impl Route {
    /// The routing of `compiled` under `partitioning`, to `topic` with `partitions`
    /// partitions.
    pub fn new(
        compiled: &CompiledTransform,
        keys: &[Option<Vec<String>>],
        topic: String,
        partitions: i32,
    ) -> anyhow::Result<Self> {
        let keys = keys
            .iter()
            .zip(&compiled.inputs)
            .map(|(cols, input)| {
                cols.as_ref()
                    .map(|cols| {
                        cols.iter()
                            .map(|c| {
                                input.schema.index_of(c).with_context(|| {
                                    format!("{} has no column {c} to repartition by", input.id())
                                })
                            })
                            .collect::<anyhow::Result<Vec<_>>>()
                    })
                    .transpose()
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            topic,
            partitions,
            keys,
        })
    }

    /// The repartition columns of `partitioning`, if it repartitions.
    pub fn keys_of(partitioning: &Partitioning) -> Option<&[Option<Vec<String>>]> {
        match partitioning {
            Partitioning::AsIs => None,
            Partitioning::Repartition(keys) => Some(keys),
        }
    }

    /// The repartition partition of each row of `batch` (rows of input `input`); `None`
    /// for rows any partition may take.
    pub fn partitions_of(
        &self,
        input: usize,
        batch: &RecordBatch,
    ) -> anyhow::Result<Vec<Option<i32>>> {
        let Some(cols) = self.keys.get(input).and_then(Option::as_ref) else {
            return Ok(vec![None; batch.num_rows()]);
        };
        let texts = cols
            .iter()
            .map(|c| {
                let col = arrow::compute::cast(batch.column(*c), &DataType::Utf8)
                    .map_err(|e| anyhow!("reading a repartition column: {e}"))?;
                col.as_string_opt::<i32>()
                    .cloned()
                    .ok_or_else(|| anyhow!("a repartition column did not cast to text"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((0..batch.num_rows())
            .map(|row| {
                let values: Vec<Option<&str>> = texts
                    .iter()
                    .map(|t| (!t.is_null(row)).then(|| t.value(row)))
                    .collect();
                Some(partition_for(&values, self.partitions))
            })
            .collect())
    }
}

/// The partition of a row whose key columns read `values` (as text): the same on every
/// worker and in every version, so equal keys from any input meet.
pub fn partition_for(values: &[Option<&str>], partitions: i32) -> i32 {
    // FNV-1a over the values, each prefixed by its length (or a null marker).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for v in values {
        match v {
            None => eat(0xFF),
            Some(s) => {
                for b in (s.len() as u32).to_be_bytes() {
                    eat(b);
                }
                for b in s.bytes() {
                    eat(b);
                }
            }
        }
    }
    (h % partitions.max(1) as u64) as i32
}

/// A watermark record's value: what upstream `partition` of `input` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// The input's index in the plan.
    pub input: usize,
    /// The upstream input partition.
    pub partition: i32,
    /// Its progress.
    pub mark: Mark,
}

impl Control {
    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a control record always serializes")
    }

    /// Reads a watermark record's value.
    pub fn decode(value: Option<&[u8]>) -> Result<Self, String> {
        serde_json::from_slice(value.unwrap_or_default())
            .map_err(|e| format!("a watermark record is not readable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Control, partition_for};
    use crate::watermark::Mark;

    #[test]
    fn equal_keys_pick_one_partition_and_keys_spread() {
        let a = partition_for(&[Some("u1"), Some("fr")], 12);
        assert_eq!(a, partition_for(&[Some("u1"), Some("fr")], 12));
        // Value boundaries are part of the key: ("u1f", "r") is another key.
        let spread: std::collections::BTreeSet<i32> = (0..200)
            .map(|i| partition_for(&[Some(&format!("user-{i}"))], 12))
            .collect();
        assert_eq!(spread.len(), 12, "200 keys reach every partition");
        assert_eq!(partition_for(&[None], 1), 0);
        assert_eq!(partition_for(&[], 5), partition_for(&[], 5));
    }

    #[test]
    fn the_hash_is_pinned_across_versions() {
        // Stored records depend on it: a change would split keys across tasks.
        assert_eq!(partition_for(&[Some("u1")], 1000), 261);
    }

    #[test]
    fn control_records_round_trip() {
        let c = Control {
            input: 1,
            partition: 2,
            mark: Mark {
                watermark: weir_engine::Watermark::at(5),
                idle: true,
            },
        };
        assert_eq!(Control::decode(Some(&c.encode())), Ok(c));
        assert!(Control::decode(Some(b"nope")).is_err());
    }
}
