//! Event-time progress.

use serde::{Deserialize, Serialize};

/// How far event time has progressed on an input or operator, in nanoseconds since the
/// epoch: rows older than this (less an operator's allowed lateness) are no longer
/// expected. Before the first row there is no watermark ([`Watermark::NONE`]), which
/// orders before every time, so the minimum over inputs is `NONE` while any input has
/// not started. [`Watermark::END`] is the end of input: every window closes.
///
/// Stored as one `i64` (state written by earlier versions used `i64::MIN` for "none").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(from = "i64", into = "i64")]
pub struct Watermark(Option<i64>);

impl Watermark {
    /// No row seen yet.
    pub const NONE: Self = Self(None);
    /// The end of input.
    pub const END: Self = Self(Some(i64::MAX));

    /// The watermark at `nanos`.
    pub fn at(nanos: i64) -> Self {
        Self::from(nanos)
    }

    /// The time, unless there is no watermark yet.
    pub fn nanos(self) -> Option<i64> {
        self.0
    }

    /// The least of `watermarks`: how far all of them have come (`NONE` for none).
    pub fn min_of(watermarks: impl IntoIterator<Item = Self>) -> Self {
        watermarks.into_iter().min().unwrap_or(Self::NONE)
    }

    /// Whether a row at `time` is behind this watermark by more than `lateness`.
    pub fn passed(self, time: i64, lateness: i64) -> bool {
        self.0.is_some_and(|w| time < w.saturating_sub(lateness))
    }
}

impl From<i64> for Watermark {
    fn from(nanos: i64) -> Self {
        Self((nanos != i64::MIN).then_some(nanos))
    }
}

impl From<Watermark> for i64 {
    fn from(w: Watermark) -> Self {
        w.0.unwrap_or(i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::Watermark;

    #[test]
    fn none_is_before_every_time_and_is_stored_as_before() {
        assert!(Watermark::NONE < Watermark::at(i64::MIN + 1));
        assert_eq!(
            Watermark::min_of([Watermark::at(5), Watermark::NONE]),
            Watermark::NONE
        );
        assert_eq!(Watermark::min_of([]), Watermark::NONE);
        assert_eq!(i64::from(Watermark::NONE), i64::MIN);
        assert_eq!(Watermark::from(i64::MIN), Watermark::NONE);
        assert_eq!(serde_json::to_string(&Watermark::at(7)).unwrap(), "7");
        assert!(!Watermark::NONE.passed(i64::MIN, 0));
        assert!(Watermark::at(10).passed(4, 5));
        assert!(!Watermark::at(10).passed(5, 5));
    }
}
