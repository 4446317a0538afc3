//! Event-time progress of one task: a watermark per input partition it hears from, and
//! which of them are idle.
//!
//! A task's engine advances each input's watermark to the minimum over that input's
//! partitions that are not idle, so a window never closes before every active partition
//! has passed it. A partition silent for `spec.windows.idleTimeout` stops holding time
//! back; when it speaks again it holds time from where time then is, and its records
//! older than that are late. A partition the task has never heard from holds time back
//! until it is heard from (a routing task says so once it is idle).
//!
//! A task of a plan without repartitioning hears from partition `p` of each input and
//! judges idleness itself by the wall clock; a task behind a repartition topic hears
//! every upstream routing task through watermark records and takes their word for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_engine::Watermark;

/// What one partition last said about its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Its watermark (never moves back).
    pub watermark: Watermark,
    /// Whether it is idle.
    pub idle: bool,
}

impl Mark {
    /// A partition that spoke: its records imply watermark `nanos`.
    pub fn heard(nanos: i64) -> Self {
        Self {
            watermark: Watermark::at(nanos),
            idle: false,
        }
    }
}

/// The progress of every input partition a task hears from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Per input, how many partitions it has (the ones not heard from hold time back).
    partitions: Vec<usize>,
    /// Per (input, partition), what it last said.
    marks: BTreeMap<(usize, i32), Mark>,
}

impl Progress {
    /// Progress over inputs with these partition counts, before anything is heard.
    pub fn new(partitions: Vec<usize>) -> Self {
        Self {
            partitions,
            marks: BTreeMap::new(),
        }
    }

    /// Records what `partition` of `input` says; its watermark never moves back.
    pub fn update(&mut self, input: usize, partition: i32, mark: Mark) {
        let prev = self.marks.get(&(input, partition)).copied();
        let next = Mark {
            watermark: prev.map_or(mark.watermark, |p| p.watermark.max(mark.watermark)),
            idle: mark.idle,
        };
        self.marks.insert((input, partition), next);
    }

    /// What `partition` of `input` last said.
    pub fn mark(&self, input: usize, partition: i32) -> Option<Mark> {
        self.marks.get(&(input, partition)).copied()
    }

    /// Every mark, for the task's state.
    pub fn marks(&self) -> impl Iterator<Item = (usize, i32, Mark)> + '_ {
        self.marks.iter().map(|((i, p), m)| (*i, *p, *m))
    }

    /// The watermark each input's operators may assume, [`Watermark::NONE`] while it
    /// holds time back entirely. An input whose partitions are all idle holds no other input back.
    pub fn effective(&self) -> Vec<Watermark> {
        let per_input: Vec<(Watermark, bool)> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(input, &n)| {
                let marks: Vec<Mark> = self
                    .marks
                    .range((input, i32::MIN)..=(input, i32::MAX))
                    .map(|(_, m)| *m)
                    .collect();
                let heard_all = marks.len() >= n;
                let active = marks.iter().filter(|m| !m.idle).map(|m| m.watermark);
                match (heard_all, active.clone().next()) {
                    (false, _) => (Watermark::NONE, false),
                    (true, Some(_)) => (Watermark::min_of(active), false),
                    // Every partition idle: time is as far as any of them got.
                    (true, None) => (
                        marks.iter().map(|m| m.watermark).max().unwrap_or_default(),
                        true,
                    ),
                }
            })
            .collect();
        let busy = per_input
            .iter()
            .filter(|(_, idle)| !idle)
            .map(|(w, _)| *w)
            .min();
        per_input
            .into_iter()
            .map(|(w, idle)| match (idle, busy) {
                (true, Some(b)) => w.max(b),
                _ => w,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Mark, Progress, Watermark};

    fn at(watermark: i64) -> Mark {
        Mark {
            watermark: Watermark::at(watermark),
            idle: false,
        }
    }

    fn idle(watermark: i64) -> Mark {
        Mark {
            watermark: Watermark::at(watermark),
            idle: true,
        }
    }

    #[test]
    fn time_is_the_slowest_active_partition_and_waits_for_the_unheard() {
        let mut p = Progress::new(vec![3]);
        p.update(0, 0, at(10));
        p.update(0, 1, at(20));
        assert_eq!(
            p.effective(),
            vec![Watermark::NONE],
            "partition 2 was never heard from"
        );
        p.update(0, 2, at(15));
        assert_eq!(p.effective(), vec![Watermark::at(10)]);
        p.update(0, 0, at(5));
        assert_eq!(
            p.effective(),
            vec![Watermark::at(10)],
            "a watermark never moves back"
        );
    }

    #[test]
    fn an_idle_partition_stops_holding_time_back_until_it_speaks_again() {
        let mut p = Progress::new(vec![3]);
        p.update(0, 0, at(100));
        p.update(0, 1, at(200));
        p.update(0, 2, idle(i64::MIN));
        assert_eq!(p.effective(), vec![Watermark::at(100)]);
        p.update(0, 0, idle(100));
        assert_eq!(p.effective(), vec![Watermark::at(200)]);
        p.update(0, 1, idle(200));
        assert_eq!(
            p.effective(),
            vec![Watermark::at(200)],
            "all idle: as far as any got"
        );
        p.update(0, 2, at(50));
        assert_eq!(p.effective(), vec![Watermark::at(50)]);
    }

    #[test]
    fn an_idle_input_does_not_hold_back_the_others() {
        let mut p = Progress::new(vec![1, 1]);
        p.update(0, 0, at(300));
        p.update(1, 0, at(100));
        assert_eq!(p.effective(), vec![Watermark::at(300), Watermark::at(100)]);
        p.update(1, 0, idle(100));
        assert_eq!(p.effective(), vec![Watermark::at(300), Watermark::at(300)]);
    }
}
