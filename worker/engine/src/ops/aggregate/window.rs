//! Event-time windows: tumbling, hopping and session, and which windows a row falls in.

use super::*;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum WinKind {
    Tumble,
    Hop,
    Session,
}

pub(super) struct Win {
    pub(super) kind: WinKind,
    pub(super) time: Eval,
    pub(super) size: i64,
    pub(super) slide: i64,
    pub(super) position: usize,
    pub(super) fields: Fields,
}

/// The windows a row at time `t` falls in, as starts. Every window's start and end are
/// representable (64-bit nanoseconds, the years 1677 to 2262): a time so close to the limits
/// that its window is not is an error for that row, never a wrapped or clamped window.
pub(super) fn assign(
    kind: WinKind,
    size: i64,
    slide: i64,
    t: i64,
    out: &mut Vec<i64>,
) -> Result<()> {
    out.clear();
    let beyond = || {
        EngineError::Overflow(format!(
            "the event time {t} (nanoseconds since 1970) is too close to the limits of time \
             (the years 1677 and 2262) for its window: the window's start or end cannot be \
             represented"
        ))
    };
    let window = |start: Option<i64>| -> Result<i64> {
        let start = start.ok_or_else(beyond)?;
        start.checked_add(size).ok_or_else(beyond)?;
        Ok(start)
    };
    match kind {
        WinKind::Tumble => out.push(window(t.div_euclid(size).checked_mul(size))?),
        WinKind::Hop => {
            let mut s = window(t.div_euclid(slide).checked_mul(slide))?;
            let first_end = t.checked_sub(size).ok_or_else(beyond)?;
            while s > first_end {
                out.push(window(Some(s))?);
                s = s.checked_sub(slide).ok_or_else(beyond)?;
            }
        }
        WinKind::Session => out.push(window(Some(t))?),
    }
    Ok(())
}
