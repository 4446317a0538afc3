//! One task's cycle: its buffered records decoded and routed (a routing task) or run
//! through its engine (a running task), and event time moved on.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::anyhow;
use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use weir_engine::{ChangeBatch, Watermark};

use super::Failure;
use super::committer::Committer;
use super::layout::Layout;
use super::output::Output;
use super::tasks::{Polled, Task, TaskId};
use crate::codec::{Decoder, Payload, Rejection};
use crate::dead_letter::Stage;
use crate::metrics::{Metrics, Role};
use crate::route::{self, Control};
use crate::transform::Job;
use crate::watermark::Mark;

/// What a task's cycle reads: the same for every task.
pub(super) struct Step<'a> {
    pub job: &'a Job,
    pub layout: &'a Layout,
    /// One per input.
    pub decoders: &'a [Decoder],
    pub output: &'a mut Output,
    pub metrics: &'a Metrics,
}

impl Step<'_> {
    /// Processes a task's buffered records, then moves its event time on.
    pub fn cycle(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        task: &mut Task,
    ) -> Result<(), Failure> {
        if !task.buffer.is_empty() {
            self.count_in(id, task);
            match id.role {
                Role::Route => self.route(committer, id, task)?,
                Role::Run => self.run(committer, id, task)?,
            }
        }
        self.tick(committer, id, task)
    }

    /// Counts a task's buffered records and bytes by topic and partition (once per cycle,
    /// not per record: the metrics' label lookups cost more than a record's copy).
    fn count_in(&self, id: TaskId, task: &Task) {
        let sources = self.layout.sources(id.role);
        let mut counts = vec![(0u64, 0u64); sources.len()];
        for p in &task.buffer {
            let c = &mut counts[p.source];
            c.0 += 1;
            c.1 += (p.key.as_ref().map_or(0, Bytes::len) + p.value.as_ref().map_or(0, Bytes::len))
                as u64;
        }
        for (source, (records, bytes)) in counts.into_iter().enumerate() {
            if records > 0 {
                self.metrics
                    .read(&sources[source], id.partition, records, bytes);
            }
        }
    }

    /// Follows the error policy for each record set aside.
    fn reject(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        polled: &[Polled],
        rejects: Vec<(usize, Stage, Rejection)>,
    ) -> Result<(), Failure> {
        let sources = self.layout.sources(id.role);
        for (i, stage, why) in rejects {
            let p = &polled[i];
            self.output.reject(
                committer,
                &sources[p.source],
                id.partition,
                (p, stage, &why),
            )?;
        }
        Ok(())
    }

    /// Marks the inputs a task has not heard from within the idle timeout as idle, then
    /// sends its progress downstream (a routing task) or advances its engine (a running
    /// task).
    fn tick(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        task: &mut Task,
    ) -> Result<(), Failure> {
        // Behind a repartition topic, idleness comes from the routing tasks' marks.
        if id.role == Role::Route || self.layout.route.is_none() {
            let idle_after = self.job.idle_timeout;
            for (input, heard) in task.heard.iter().enumerate() {
                if self.job.compiled.inputs[input].event_time.is_some()
                    && heard.elapsed() >= idle_after
                {
                    let watermark = task
                        .progress
                        .mark(input, id.partition)
                        .map_or(Watermark::NONE, |m| m.watermark);
                    task.progress.update(
                        input,
                        id.partition,
                        Mark {
                            watermark,
                            idle: true,
                        },
                    );
                }
            }
        }
        match id.role {
            Role::Route => self.send_marks(committer, id, task),
            Role::Run => {
                let out = self.advance(id, task)?;
                if !out.is_empty() {
                    task.dirty = true;
                    for changes in &out {
                        self.output.changes(committer, id, changes)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// This task's partition of `input` said watermark `wm` (nanoseconds) in the middle
    /// of a batch: moves the engine on; returns the output that completes.
    fn watermark_moved(
        &self,
        id: TaskId,
        task: &mut Task,
        input: usize,
        wm: i64,
    ) -> Result<Vec<ChangeBatch>, Failure> {
        task.progress.update(input, id.partition, Mark::heard(wm));
        self.advance(id, task)
    }

    /// Moves a running task's engine to the watermarks its progress allows; returns the
    /// output that completes.
    fn advance(&self, id: TaskId, task: &mut Task) -> Result<Vec<ChangeBatch>, Failure> {
        let mut out = Vec::new();
        for (input, wm) in task.progress.effective().into_iter().enumerate() {
            let Some(wm) = wm.nanos() else { continue };
            out.extend(task.engine.advance_watermark(input, wm).map_err(|e| {
                anyhow!(
                    "Transform {}: task {id}: closing windows failed: {e}",
                    self.job.id
                )
            })?);
            self.metrics
                .watermark(&self.job.input_topics[input], id.partition, wm);
        }
        out.retain(|b| !b.is_empty());
        Ok(out)
    }

    /// A routing task: writes its progress to every repartition partition when it
    /// changed since it was last written.
    fn send_marks(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        task: &mut Task,
    ) -> Result<(), Failure> {
        let Some(route) = &self.layout.route else {
            return Ok(());
        };
        let mut controls = Vec::new();
        for (input, sent) in task.sent.iter_mut().enumerate() {
            let mark = task.progress.mark(input, id.partition);
            if mark.is_some() && mark != *sent {
                *sent = mark;
                controls.extend(mark.map(|mark| Control {
                    input,
                    partition: id.partition,
                    mark,
                }));
            }
        }
        if controls.is_empty() {
            return Ok(());
        }
        task.dirty = true;
        for c in controls {
            send_control(committer, route, &c)?;
        }
        Ok(())
    }

    /// A routing task: forwards each buffered record to the repartition partition its
    /// key columns pick, and sets aside the records that cannot be read.
    fn route(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        task: &mut Task,
    ) -> Result<(), Failure> {
        let Some(route) = &self.layout.route else {
            return Ok(());
        };
        let polled = std::mem::take(&mut task.buffer);
        task.dirty = true;
        let mut sends: Vec<(usize, Option<i32>)> = Vec::new();
        let mut rejects: Vec<(usize, Stage, Rejection)> = Vec::new();
        // Each batch's watermark, recorded once its records are sent; and the records
        // behind the watermark of the records before them, each preceded by that
        // watermark, so the stateful task judges lateness record by record.
        let mut watermarks: Vec<(usize, i64)> = Vec::new();
        let mut cuts: Vec<(usize, usize, i64)> = Vec::new();
        for (start, run) in runs(&polled, |p| Some(p.source)) {
            let source = run[0].source;
            let decoded = decode_run(&self.decoders[source], run);
            rejects.extend(
                (decoded.rejected.into_iter()).map(|(i, why)| (start + i, Stage::Decode, why)),
            );
            for (batch, rows) in decoded.batches.iter().zip(&decoded.rows) {
                let parts = route
                    .partitions_of(source, &batch.data)
                    .map_err(|e| anyhow!("Transform {}: task {id}: {e}", self.job.id))?;
                sends.extend(rows.iter().zip(parts).map(|(r, q)| (start + r, q)));
                let behind = task
                    .engine
                    .behind_earlier_rows(source, &batch.data)
                    .map_err(|e| anyhow!("reading event times: {e}"))?;
                cuts.extend(
                    behind
                        .into_iter()
                        .map(|(r, wm)| (start + rows[r], source, wm)),
                );
                if let Some(wm) = task.engine.watermark_of(source, &batch.data).ok().flatten() {
                    watermarks.push((source, wm));
                }
            }
            task.heard[source] = Instant::now();
            task.offsets.insert(source, run[run.len() - 1].offset + 1);
        }
        sends.sort_unstable_by_key(|(i, _)| *i);
        cuts.sort_unstable_by_key(|(i, _, _)| *i);
        let mut cuts = cuts.into_iter().peekable();
        let (mut routed, mut bytes) = (0, 0);
        for (i, q) in sends {
            while let Some((_, input, wm)) = cuts.next_if(|(at, _, _)| *at <= i) {
                let mark = Mark::heard(wm);
                send_control(
                    committer,
                    route,
                    &Control {
                        input,
                        partition: id.partition,
                        mark,
                    },
                )?;
                task.sent[input] = Some(mark);
            }
            let p = &polled[i];
            let Some(input) = p.input else { continue };
            let id_header = self.job.compiled.inputs[input].id();
            let mut headers = p.headers_and(1);
            headers = headers.insert(Header {
                key: route::INPUT_HEADER,
                value: Some(id_header.as_bytes()),
            });
            let mut rec: BaseRecord<'_, [u8], [u8], ()> =
                BaseRecord::to(&route.topic).headers(headers);
            if let Some(q) = q {
                rec = rec.partition(q);
            }
            if let Some(k) = &p.key {
                rec = rec.key(&k[..]);
            }
            if let Some(v) = &p.value {
                rec = rec.payload(&v[..]);
            }
            committer.send(rec)?;
            routed += 1;
            bytes += (p.key.as_ref().map_or(0, Bytes::len) + p.value.as_ref().map_or(0, Bytes::len))
                as u64;
        }
        self.metrics.written(&route.topic, routed, bytes);
        for (source, wm) in watermarks {
            task.progress.update(source, id.partition, Mark::heard(wm));
        }
        self.reject(committer, id, &polled, rejects)
    }

    /// A running task: runs its buffered records through its engine and sends the results.
    fn run(
        &mut self,
        committer: &mut Committer,
        id: TaskId,
        task: &mut Task,
    ) -> Result<(), Failure> {
        let repartitioned = self.layout.route.is_some();
        let polled = std::mem::take(&mut task.buffer);
        task.dirty = true;
        let mut sends: Vec<ChangeBatch> = Vec::new();
        let mut rejects: Vec<(usize, Stage, Rejection)> = Vec::new();
        let mut last: BTreeMap<usize, i64> = BTreeMap::new();
        for p in &polled {
            last.insert(p.source, p.offset);
        }
        for (start, run) in runs(&polled, |p| p.input.filter(|_| p.control.is_none())) {
            let first = &run[0];
            task.offsets.insert(first.source, first.offset + 1);
            if let Some(c) = first.control {
                task.progress.update(c.input, c.partition, c.mark);
                // The records after a mark are judged against it.
                sends.extend(self.advance(id, task)?);
                continue;
            }
            let Some(input) = first.input else {
                rejects.push((start, Stage::Decode, not_a_weir_record()));
                continue;
            };
            let decoded = decode_run(&self.decoders[input], run);
            for (i, why) in decoded.rejected {
                rejects.push((start + i, Stage::Decode, why));
            }
            let careful = task
                .careful_until
                .get(&first.source)
                .is_some_and(|until| first.offset <= *until);
            for (batch, rows) in decoded.batches.into_iter().zip(decoded.rows) {
                // Behind a repartition topic, time comes from the watermark records.
                let wm = if repartitioned {
                    None
                } else {
                    task.engine.watermark_of(input, &batch.data).ok().flatten()
                };
                // Rows behind the watermark the rows before them imply: the watermark
                // moves (and windows close) just before each, as record by record.
                let cuts = if repartitioned {
                    Vec::new()
                } else {
                    task.engine
                        .behind_earlier_rows(input, &batch.data)
                        .map_err(|e| anyhow!("reading event times: {e}"))?
                };
                let cut_at = |row: usize| {
                    cuts.binary_search_by_key(&row, |(r, _)| *r)
                        .ok()
                        .map(|i| cuts[i].1)
                };
                if careful {
                    for (r, row) in rows.iter().enumerate() {
                        if let Some(wm) = cut_at(r) {
                            sends.extend(self.watermark_moved(id, task, input, wm)?);
                        }
                        let one = batch.slice(r, 1);
                        let snapshot = task.engine.snapshot().map_err(|e| anyhow!("{e}"))?;
                        let late_before = task.engine.late_records();
                        match task.engine.push(input, one) {
                            Ok(out) => {
                                sends.extend(out);
                                if task.engine.late_records() > late_before {
                                    rejects.push((start + row, Stage::Engine, late()));
                                }
                            }
                            Err(e) => {
                                task.engine.restore(&snapshot).map_err(|e| anyhow!("{e}"))?;
                                rejects.push((
                                    start + row,
                                    Stage::Engine,
                                    Rejection {
                                        class: "engine",
                                        message: e.to_string(),
                                        field: None,
                                    },
                                ));
                            }
                        }
                    }
                } else {
                    // Rows behind the watermark go one at a time, so a late one is known
                    // and follows the error policy; the others go in runs, in order.
                    let behind = task
                        .engine
                        .behind_watermark(input, &batch.data)
                        .map_err(|e| anyhow!("reading event times: {e}"))?;
                    let single = isolate(behind, &cuts, batch.len());
                    for (offset, len) in pieces(single.as_ref(), batch.len()) {
                        if len == 1
                            && let Some(wm) = cut_at(offset)
                        {
                            sends.extend(self.watermark_moved(id, task, input, wm)?);
                        }
                        let late_before = task.engine.late_records();
                        match task.engine.push(input, batch.slice(offset, len)) {
                            Ok(out) => sends.extend(out),
                            Err(e) => {
                                return Err(Failure::Engine {
                                    task: id,
                                    until: last,
                                    error: e.to_string(),
                                });
                            }
                        }
                        if single.is_some() && len == 1 && task.engine.late_records() > late_before
                        {
                            rejects.push((start + rows[offset], Stage::Engine, late()));
                        }
                    }
                }
                if let Some(wm) = wm {
                    task.progress.update(input, id.partition, Mark::heard(wm));
                }
                if !repartitioned {
                    task.heard[input] = Instant::now();
                }
                // Windows close as the batches pass, as they would record by record.
                sends.extend(self.advance(id, task)?);
            }
            task.offsets
                .insert(first.source, run[run.len() - 1].offset + 1);
        }
        if task
            .careful_until
            .iter()
            .all(|(i, until)| last.get(i).is_some_and(|l| l >= until))
        {
            task.careful_until.clear();
        }
        let late = task.engine.late_records();
        self.metrics
            .late_records
            .inc_by(late.saturating_sub(task.late_seen));
        task.late_seen = late;

        // Send what the task produced: output records, then dead letters.
        for changes in &sends {
            self.output.changes(committer, id, changes)?;
        }
        self.reject(committer, id, &polled, rejects)
    }
}

/// Splits `polled` into runs of consecutive records with the same `group`, each with the
/// index of its first record; a record whose group is `None` is a run of its own.
fn runs(
    polled: &[Polled],
    group: impl Fn(&Polled) -> Option<usize>,
) -> impl Iterator<Item = (usize, &[Polled])> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= polled.len() {
            return None;
        }
        let end = match group(&polled[start]) {
            None => start + 1,
            Some(g) => polled[start..]
                .iter()
                .position(|p| group(p) != Some(g))
                .map_or(polled.len(), |n| start + n),
        };
        let run = (start, &polled[start..end]);
        start = end;
        Some(run)
    })
}

/// Splits `len` rows into pieces to push: each row where `single` is true alone, the
/// rows between in runs.
/// Writes a routing task's watermark mark to every repartition partition.
fn send_control(
    committer: &mut Committer,
    route: &route::Route,
    c: &Control,
) -> Result<(), Failure> {
    let value = c.encode();
    for q in 0..route.partitions {
        let headers = OwnedHeaders::new().insert(Header {
            key: route::CONTROL_HEADER,
            value: Some(route::WATERMARK.as_bytes()),
        });
        committer.send(
            BaseRecord::<'_, [u8], [u8], ()>::to(&route.topic)
                .partition(q)
                .payload(value.as_slice())
                .headers(headers),
        )?;
    }
    Ok(())
}

/// The rows to push one at a time: those behind the watermark (`behind`) and those
/// behind the rows before them (`cuts`).
fn isolate(
    behind: Option<arrow::array::BooleanArray>,
    cuts: &[(usize, i64)],
    len: usize,
) -> Option<arrow::array::BooleanArray> {
    if cuts.is_empty() {
        return behind;
    }
    let mut single: Vec<bool> = match &behind {
        Some(b) => (0..len).map(|i| b.value(i)).collect(),
        None => vec![false; len],
    };
    for (r, _) in cuts {
        single[*r] = true;
    }
    Some(single.into())
}

fn pieces(single: Option<&arrow::array::BooleanArray>, len: usize) -> Vec<(usize, usize)> {
    let Some(single) = single else {
        return vec![(0, len)];
    };
    let mut out = Vec::new();
    let mut run = 0;
    for i in 0..len {
        if single.value(i) {
            if run < i {
                out.push((run, i - run));
            }
            out.push((i, 1));
            run = i + 1;
        }
    }
    if run < len {
        out.push((run, len - run));
    }
    out
}

/// Why a late record is set aside.
fn late() -> Rejection {
    Rejection {
        class: "late",
        message: "the record arrived after the watermark had closed its window (or expired \
                  the join state it needed)"
            .into(),
        field: None,
    }
}

/// Why a record in the repartition topic that names no input is set aside.
fn not_a_weir_record() -> Rejection {
    Rejection {
        class: "not_a_weir_record",
        message: format!(
            "a record in the repartition topic without a {} header naming one of this \
             plan's inputs",
            route::INPUT_HEADER
        ),
        field: None,
    }
}

/// Decodes a run of records of one input.
fn decode_run(decoder: &Decoder, run: &[Polled]) -> crate::codec::Decoded {
    let payloads: Vec<Payload<'_>> = run
        .iter()
        .map(|p| Payload {
            key: p.key.as_deref(),
            value: p.value.as_deref(),
        })
        .collect();
    decoder.decode(&payloads)
}

#[cfg(test)]
mod tests {
    use super::{Polled, runs};
    use crate::route::Control;
    use crate::watermark::Mark;
    use weir_engine::Watermark;

    #[test]
    fn rows_behind_the_watermark_are_pushed_alone_and_the_rest_in_runs() {
        let mask: arrow::array::BooleanArray = [false, true, true, false, false, true]
            .into_iter()
            .map(Some)
            .collect();
        assert_eq!(
            super::pieces(Some(&mask), 6),
            vec![(0, 1), (1, 1), (2, 1), (3, 2), (5, 1)]
        );
        assert_eq!(super::pieces(None, 4), vec![(0, 4)]);
    }

    #[test]
    fn rows_behind_earlier_rows_of_their_batch_are_pushed_alone_too() {
        let behind: arrow::array::BooleanArray =
            [true, false, false, false].into_iter().map(Some).collect();
        let single = super::isolate(Some(behind), &[(2, 70)], 4).expect("rows to isolate");
        assert_eq!(
            super::pieces(Some(&single), 4),
            vec![(0, 1), (1, 1), (2, 1), (3, 1)]
        );
        let single = super::isolate(None, &[(2, 70)], 4).expect("rows to isolate");
        assert_eq!(
            super::pieces(Some(&single), 4),
            vec![(0, 2), (2, 1), (3, 1)]
        );
        assert!(super::isolate(None, &[], 4).is_none());
    }

    fn polled(input: Option<usize>, control: bool) -> Polled {
        Polled {
            source: 0,
            input,
            control: control.then_some(Control {
                input: 0,
                partition: 0,
                mark: Mark {
                    watermark: Watermark::NONE,
                    idle: false,
                },
            }),
            offset: 0,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    #[test]
    fn records_of_one_input_decode_together_and_watermarks_and_strays_alone() {
        let polled = [
            polled(Some(0), false),
            polled(Some(0), false),
            polled(Some(0), true),
            polled(Some(1), false),
            polled(None, false),
            polled(None, false),
            polled(Some(1), false),
            polled(Some(1), false),
        ];
        let group = |p: &Polled| p.input.filter(|_| p.control.is_none());
        let found: Vec<(usize, usize)> = runs(&polled, group).map(|(s, r)| (s, r.len())).collect();
        assert_eq!(found, vec![(0, 2), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2)]);
        assert_eq!(runs(&[], group).count(), 0);
    }
}
