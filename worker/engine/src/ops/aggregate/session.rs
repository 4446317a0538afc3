//! Session windows: a row opens a session or merges the sessions it bridges.

use super::*;

/// One input row on its way into a session: its group key, its session `[t, end)`, its
/// index in the batch and its weight.
pub(super) struct SessionRow<'a> {
    pub(super) key: &'a [u8],
    pub(super) t: i64,
    pub(super) end: i64,
    pub(super) i: usize,
    pub(super) w: i64,
}

impl AggregateOp {
    /// Adds a row to its group's sessions, merging every session it overlaps; `prepared`
    /// holds the batch's argument values per aggregate of `kinds`.
    pub(super) fn session_add(
        &mut self,
        row: SessionRow<'_>,
        kinds: &[Kind],
        prepared: &[Prepared],
        touched: &mut Touched,
    ) -> Result<()> {
        let SessionRow { key, t, end, i, w } = row;
        let updates = self.updates;
        let fresh = new_group_for(&self.specs, self.append_input);
        self.dirty.mark(tagged(SESSIONS, &[key]));
        let sessions = self.state.sessions.entry(key.to_vec()).or_default();
        // Sessions [s, e) that overlap [t, end).
        let overlapping: Vec<i64> = sessions
            .range(..end)
            .filter(|(_, (e, _))| *e > t)
            .map(|(s, _)| *s)
            .collect();
        // An integer SUM must stay within 64 bits when sessions merge, even when the row
        // that bridges them adds nothing (a NULL): checked before any state changes.
        for (k, kind) in kinds.iter().enumerate() {
            if *kind != Kind::SumInt {
                continue;
            }
            let mut total: i128 = overlapping
                .iter()
                .filter_map(|s| match sessions.get(s).and_then(|(_, g)| g.accs.get(k)) {
                    Some(Acc::SumI { sum, .. }) => Some(*sum),
                    _ => None,
                })
                .sum();
            if let Some(Prepared::Int(a)) = prepared.get(k)
                && a.is_valid(i)
            {
                total += i128::from(a.value(i)) * i128::from(w);
            }
            if i64::try_from(total).is_err() {
                return Err(EngineError::Overflow(format!(
                    "an integer SUM overflowed the 64-bit range when sessions merged (it \
                     reached {total})"
                )));
            }
        }
        let mut start = t;
        let mut stop = end;
        let mut merged = fresh;
        for s in overlapping {
            let (e, g) = sessions.remove(&s).expect("listed above");
            if updates && !touched.contains_key(&(s, key.to_vec())) {
                touched.insert((s, key.to_vec()), (e, group_values(kinds, false, Some(&g))));
            }
            start = start.min(s);
            stop = stop.max(e);
            merged.rows += g.rows;
            for ((a, b), k) in merged.accs.iter_mut().zip(g.accs).zip(kinds) {
                merge(a, b, *k);
            }
        }
        merged.rows += w;
        for ((acc, p), k) in merged.accs.iter_mut().zip(prepared).zip(kinds) {
            update(acc, *k, p, i, w)?;
        }
        if updates && !touched.contains_key(&(start, key.to_vec())) {
            touched.insert((start, key.to_vec()), (stop, None));
        }
        if !merged.is_empty() {
            sessions.insert(start, (stop, merged));
        }
        Ok(())
    }
}
