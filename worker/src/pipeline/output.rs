//! What the tasks write: output rows, checked against `spec.expectations`, and dead letters
//! for the records and rows set aside.

use std::sync::Arc;

use anyhow::anyhow;
use bytes::Bytes;
use rdkafka::message::Header;
use rdkafka::producer::BaseRecord;
use weir_crds::transform::OnFailure;
use weir_engine::ChangeBatch;

use super::Failure;
use super::committer::Committer;
use super::tasks::{Polled, TaskId};
use crate::codec::{Encoder, Rejection};
use crate::dead_letter::{self, Stage};
use crate::metrics::Metrics;
use crate::transform::Job;

/// The output topic's encoder and checks, and the dead-letter topic.
pub(super) struct Output {
    job: Arc<Job>,
    encoder: Encoder,
    /// `spec.expectations`, compiled.
    checks: weir_engine::Expectations,
    dead_letters: String,
    /// Named in each dead letter's headers.
    worker_name: String,
    metrics: Arc<Metrics>,
}

impl Output {
    pub fn new(
        job: Arc<Job>,
        dead_letters: String,
        worker_name: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let encoder = Encoder::new(
            &job.compiled.output_schema,
            &job.compiled.output_key,
            job.compiled.output_kind,
        );
        let checks = weir_crds::compile::compile_expectations(&job.expectations, &job.compiled)
            .map_err(|e| anyhow!("Transform {}: {e}", job.id))?;
        Ok(Self {
            job,
            encoder,
            checks,
            dead_letters,
            worker_name,
            metrics,
        })
    }

    /// Checks task `id`'s output rows against `spec.expectations`, then sends the rows
    /// that pass.
    pub fn changes(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        changes: &ChangeBatch,
    ) -> Result<(), Failure> {
        let failures = self
            .checks
            .failures(changes)
            .map_err(|e| anyhow!("Transform {}: checking expectations: {e}", self.job.id))?;
        if failures.is_empty() {
            return self.write(committer, changes);
        }
        let mut keep = vec![true; changes.len()];
        for (row, check) in failures {
            let expectation = &self.job.expectations[check];
            self.metrics.dead_letter(
                Stage::Expectation,
                "expectation_failed",
                expectation.on_failure,
            );
            self.metrics.expectation_failed(&expectation.name);
            if !std::mem::replace(&mut keep[row], false) {
                continue; // already set aside by an earlier check
            }
            let record = self
                .encoder
                .encode(&changes.slice(row, 1))
                .map_err(|e| anyhow!("encoding an output row: {e}"))?
                .into_iter()
                .next();
            match expectation.on_failure {
                OnFailure::Drop => {}
                OnFailure::Fail => {
                    return Err(Failure::Fatal(anyhow!(
                        "Transform {}: expectation {} (onFailure: fail) failed on an output row \
                         of task {id}: {}",
                        self.job.id,
                        expectation.name,
                        record
                            .as_ref()
                            .and_then(|r| r.value.as_ref())
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    )));
                }
                OnFailure::DeadLetter => {
                    let row = Polled {
                        source: 0,
                        input: None,
                        control: None,
                        offset: -1,
                        key: record.as_ref().and_then(|r| r.key.clone()).map(Bytes::from),
                        value: record.and_then(|r| r.value).map(Bytes::from),
                        headers: Vec::new(),
                        timestamp: None,
                    };
                    let why = Rejection {
                        class: "expectation_failed",
                        message: format!(
                            "expectation {} failed: {}",
                            expectation.name, expectation.check
                        ),
                        field: None,
                    };
                    let from = dead_letter::Source {
                        topic: &self.job.output_topic,
                        partition: id.partition,
                        offset: -1,
                        timestamp: None,
                    };
                    self.dead_letter(committer, &row, Stage::Expectation, &why, &from)?;
                }
            }
        }
        let mask: arrow::array::BooleanArray = keep.into_iter().map(Some).collect();
        let passed = changes
            .filter(&mask)
            .map_err(|e| anyhow!("filtering output rows: {e}"))?;
        self.write(committer, &passed)
    }

    /// Encodes and sends output rows.
    fn write(&self, committer: &mut Committer, changes: &ChangeBatch) -> Result<(), Failure> {
        let records = self
            .encoder
            .encode_batch(changes)
            .map_err(|e| anyhow!("encoding output rows: {e}"))?;
        let topic = &self.job.output_topic;
        let (mut sent, mut bytes) = (0u64, 0u64);
        let result = records.iter().try_for_each(|(key, value)| {
            let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            if let Some(v) = value {
                rec = rec.payload(v);
            }
            committer.send(rec)?;
            sent += 1;
            bytes += (key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)) as u64;
            Ok(())
        });
        self.metrics.written(topic, sent, bytes);
        result
    }

    /// Follows `spec.errorPolicy` for record `p` of `topic` that could not be processed.
    pub fn reject(
        &self,
        committer: &mut Committer,
        topic: &str,
        partition: i32,
        (p, stage, why): (&Polled, Stage, &Rejection),
    ) -> Result<(), Failure> {
        let policy = self.job.error_policy;
        self.metrics.dead_letter(stage, why.class, policy);
        match policy {
            OnFailure::Drop => Ok(()),
            OnFailure::Fail => Err(Failure::Fatal(anyhow!(
                "Transform {}: spec.errorPolicy is fail and the record at {topic}/{partition}@{} \
                 could not be processed ({} {}): {}",
                self.job.id,
                p.offset,
                stage.as_str(),
                why.class,
                why.message
            ))),
            OnFailure::DeadLetter => {
                let from = dead_letter::Source {
                    topic,
                    partition,
                    offset: p.offset,
                    timestamp: p.timestamp,
                };
                self.dead_letter(committer, p, stage, why, &from)
            }
        }
    }

    /// Writes `p` to the dead-letter topic with its headers and the `weir.*` ones.
    fn dead_letter(
        &self,
        committer: &mut Committer,
        p: &Polled,
        stage: Stage,
        why: &Rejection,
        from: &dead_letter::Source<'_>,
    ) -> Result<(), Failure> {
        let mut headers = p.headers_and(12);
        for (k, v) in dead_letter::headers(
            stage,
            why,
            from,
            &self.job.id,
            &self.job.compiled.fingerprint,
            &self.worker_name,
        ) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], ()> =
            BaseRecord::to(&self.dead_letters).headers(headers);
        if let Some(k) = &p.key {
            rec = rec.key(&k[..]);
        }
        if let Some(v) = &p.value {
            rec = rec.payload(&v[..]);
        }
        committer.send(rec)
    }
}
