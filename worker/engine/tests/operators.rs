//! Property tests per stateful operator: after every batch of changes, the output
//! accumulated so far equals recomputing from scratch over all input so far (one batch,
//! the same watermark).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use weir_engine::runner::consolidate;
use weir_engine::sql::{CompileOptions, CompiledTransform, StreamInput, compile};
use weir_engine::{ChangeBatch, Engine};

/// One step: (input, rows of (key, value, ts ms), weight).
type Step = (usize, Vec<(i64, Option<i64>, i64)>, i64);

fn compiled(sql: &str) -> CompiledTransform {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = |k: &str| {
        Arc::new(Schema::new(vec![
            Field::new(k, DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
            Field::new("ts", ts.clone(), false),
        ]))
    };
    let events = StreamInput::new("ns", "e", schema("k")).with_event_time("ts", 0);
    let other = StreamInput::new("ns", "f", schema("k")).with_event_time("ts", 0);
    let table = StreamInput::new("ns", "tb", schema("id"))
        .with_key(["id"])
        .as_table();
    // A changelog without a key: its weights are raw changes (retract or insert copies).
    let changes = StreamInput::new("ns", "c", schema("k")).as_table();
    compile(
        sql,
        &[events, other, table, changes],
        &CompileOptions::new("ns"),
    )
    .expect("compiles")
}

/// The streams, by the index a [`Step`] names.
const NAMES: [&str; 4] = ["e", "f", "tb", "c"];

fn batch(schema: &Arc<Schema>, rows: &[(i64, Option<i64>, i64)], w: i64) -> ChangeBatch {
    let data = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .expect("batch");
    ChangeBatch::new(data, vec![w; rows.len()])
}

/// Feeds `steps` to `engine`, returning the outputs; the watermark of every input with
/// event time follows the newest event time seen.
fn feed(
    c: &CompiledTransform,
    engine: &mut Engine,
    steps: &[Step],
    newest: &mut i64,
) -> Vec<ChangeBatch> {
    let mut out = Vec::new();
    for (input, rows, w) in steps {
        let Some(i) = c.inputs.iter().position(|x| x.name == NAMES[*input]) else {
            continue;
        };
        out.extend(
            engine
                .push(i, batch(&c.inputs[i].schema, rows, *w))
                .expect("push"),
        );
        if c.inputs[i].event_time.is_some() {
            *newest = rows.iter().map(|r| r.2).fold(*newest, i64::max);
        }
        for (j, def) in c.inputs.iter().enumerate() {
            if def.event_time.is_some() && *newest > i64::MIN {
                out.extend(
                    engine
                        .advance_watermark(j, *newest * 1_000_000)
                        .expect("watermark"),
                );
            }
        }
    }
    out
}

fn steps(retract: bool) -> impl Strategy<Value = Vec<Step>> {
    let row = (
        0i64..3,
        prop_oneof![4 => (-4i64..5).prop_map(Some), 1 => Just(None)],
        0i64..60_000,
    );
    let w = if retract {
        prop_oneof![3 => Just(1i64), 1 => Just(-1i64)].boxed()
    } else {
        Just(1i64).boxed()
    };
    prop::collection::vec((0usize..3, prop::collection::vec(row, 1..4), w), 1..14).prop_map(
        move |mut steps| {
            // Tables change before events arrive (a lookup sees the final table, as a
            // recompute does), and event time never goes back, so nothing is late.
            if retract {
                // Weighted changes go to the unkeyed changelog `c`; append-only streams
                // never retract.
                for s in &mut steps {
                    s.0 = 3;
                }
            }
            steps.sort_by_key(|s| s.0 != 2);
            let mut t = 0;
            for s in &mut steps {
                for r in &mut s.1 {
                    t += r.2 % 7_000;
                    r.2 = t;
                }
            }
            steps
        },
    )
}

fn check(sql: &str, steps: &[Step]) -> Result<(), TestCaseError> {
    let c = compiled(sql);
    let mut engine = Engine::new(&c).expect("engine");
    let mut acc = Vec::new();
    let mut newest = i64::MIN;
    for n in 1..=steps.len() {
        acc.extend(feed(&c, &mut engine, &steps[n - 1..n], &mut newest));
        // Recompute: a fresh engine gets all input so far as one batch per input (in
        // order: the table first), then the same watermark.
        let mut fresh = Engine::new(&c).expect("engine");
        let mut out = Vec::new();
        for input in [2, 3, 0, 1] {
            let Some(i) = c.inputs.iter().position(|x| x.name == NAMES[input]) else {
                continue;
            };
            let rows: Vec<_> = steps[..n]
                .iter()
                .filter(|s| s.0 == input)
                .flat_map(|s| s.1.iter().map(move |r| (*r, s.2)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let mut b = batch(
                &c.inputs[i].schema,
                &rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                1,
            );
            b = ChangeBatch::new(b.data, rows.iter().map(|r| r.1).collect());
            out.extend(fresh.push(i, b).expect("push"));
        }
        for (j, def) in c.inputs.iter().enumerate() {
            if def.event_time.is_some() && newest > i64::MIN {
                out.extend(
                    fresh
                        .advance_watermark(j, newest * 1_000_000)
                        .expect("watermark"),
                );
            }
        }
        let a = consolidate(&engine.output_schema(), &acc).expect("consolidate");
        let b = consolidate(&fresh.output_schema(), &out).expect("consolidate");
        prop_assert_eq!(a, b, "after step {} of {}", n, sql);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn aggregate_under_retraction(s in steps(false)) {
        check("SELECT id, v FROM tb", &s)?;
        check("SELECT v, COUNT(*) AS n, MIN(id) AS lo, MAX(id) AS hi, SUM(id) AS s, COUNT(DISTINCT id) AS d FROM tb GROUP BY v", &s)?;
    }

    #[test]
    fn aggregate_with_weights(s in steps(true)) {
        check("SELECT k, COUNT(*) AS n, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS a, COUNT(DISTINCT v) AS d FROM c GROUP BY k", &s)?;
    }

    #[test]
    fn regular_join(s in steps(false)) {
        check("SELECT a.id, b.id AS other FROM tb a JOIN tb b ON a.v = b.v", &s)?;
        check("SELECT a.id, b.v AS bv FROM tb a LEFT JOIN tb b ON a.v = b.id", &s)?;
    }

    #[test]
    fn lookup_join(s in steps(false)) {
        check("SELECT e.k, e.v, tb.v AS tv FROM e LEFT JOIN tb ON e.k = tb.id", &s)?;
    }

    #[test]
    fn tumbling_and_hopping_windows(s in steps(false)) {
        check("SELECT k, window_start, COUNT(*) AS n, MAX(v) AS hi FROM e GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)", &s)?;
        check("SELECT window_start, SUM(v) AS total FROM e GROUP BY HOP(ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND)", &s)?;
    }

    #[test]
    fn session_windows(s in steps(false)) {
        check("SELECT k, window_start, window_end, COUNT(*) AS n FROM e GROUP BY k, SESSION(ts, INTERVAL '5' SECOND)", &s)?;
    }

    #[test]
    fn interval_join(s in steps(false)) {
        check("SELECT e.k, e.v, f.v AS fv FROM e JOIN f ON e.k = f.k AND f.ts BETWEEN e.ts AND e.ts + INTERVAL '5' SECOND", &s)?;
        check("SELECT e.k, f.v AS fv FROM e LEFT JOIN f ON e.k = f.k AND f.ts BETWEEN e.ts - INTERVAL '2' SECOND AND e.ts + INTERVAL '3' SECOND", &s)?;
    }
}

#[test]
fn a_retraction_on_an_event_stream_is_refused() {
    let c = compiled("SELECT k, MIN(v) AS lo FROM e GROUP BY k");
    let mut engine = Engine::new(&c).expect("engine");
    let e = c
        .inputs
        .iter()
        .position(|x| x.name == "e")
        .expect("reads e");
    let err = engine
        .push(e, batch(&c.inputs[e].schema, &[(1, Some(3), 0)], -1))
        .expect_err("a retraction on an append-only stream");
    let message = err.to_string();
    assert!(
        message.contains("ns.e") && message.contains("append-only"),
        "{message}"
    );
    // Inserts still work after the refusal.
    let out = engine
        .push(e, batch(&c.inputs[e].schema, &[(1, Some(3), 0)], 1))
        .expect("insert");
    let rows = consolidate(&engine.output_schema(), &out).expect("consolidate");
    assert_eq!(rows, vec![(vec!["1".to_owned(), "3".to_owned()], 1)]);
}

/// A commit writes what changed, not the whole state: after 1,000 groups exist, one more
/// record changes one group's entry (and the engine's small meta entry), whatever the
/// size of the rest.
#[test]
fn state_changes_are_in_proportion_to_what_changed() {
    for sql in [
        "SELECT k, COUNT(*) AS n, SUM(v) AS s FROM e GROUP BY k",
        "SELECT k, window_start, MAX(v) AS m FROM e GROUP BY k, TUMBLE(ts, INTERVAL '1' HOUR)",
        "SELECT e.k, tb.v FROM e JOIN tb ON e.k = tb.id",
    ] {
        let c = compiled(sql);
        let mut engine = Engine::new(&c).unwrap();
        let input = |name: &str| c.inputs.iter().position(|i| i.name == name);
        let (port, schema) = match input("tb") {
            Some(i) => (i, c.inputs[i].schema.clone()),
            None => (
                input("e").unwrap(),
                c.inputs[input("e").unwrap()].schema.clone(),
            ),
        };
        let rows: Vec<(i64, Option<i64>, i64)> = (0..1000).map(|k| (k, Some(k), 1000)).collect();
        engine.push(port, batch(&schema, &rows, 1)).unwrap();
        let first = engine.take_state_changes().unwrap();
        assert!(
            first.len() >= 1000,
            "{sql}: every new entry is written: {}",
            first.len()
        );
        assert!(
            engine.take_state_changes().unwrap().is_empty(),
            "{sql}: nothing changed"
        );
        engine
            .push(port, batch(&schema, &[(7, Some(8), 2000)], 1))
            .unwrap();
        let second = engine.take_state_changes().unwrap();
        assert!(
            !second.is_empty() && second.len() <= 3,
            "{sql}: one record changes one entry, not {}",
            second.len()
        );
        // Rebuilt from the entries, the engine answers the next record the same way.
        let mut rebuilt = Engine::new(&c).unwrap();
        for (k, v) in first.iter().chain(&second) {
            rebuilt.apply_state_entry(k, v.as_deref()).unwrap();
        }
        rebuilt.finish_restore().unwrap();
        let next = batch(&schema, &[(7, Some(1), 3000)], 1);
        let a = consolidate(
            &engine.output_schema(),
            &engine.push(port, next.clone()).unwrap(),
        )
        .unwrap();
        let b = consolidate(&rebuilt.output_schema(), &rebuilt.push(port, next).unwrap()).unwrap();
        assert_eq!(a, b, "{sql}");
    }
}

/// An engine refuses state written by another plan, naming both.
#[test]
fn state_from_another_plan_is_refused() {
    let a = compiled("SELECT k, COUNT(*) AS n FROM e GROUP BY k");
    let b = compiled("SELECT k, SUM(v) AS n FROM e GROUP BY k");
    let mut engine = Engine::new(&a).unwrap();
    let schema = a.inputs[0].schema.clone();
    engine
        .push(0, batch(&schema, &[(1, Some(1), 1)], 1))
        .unwrap();
    let entries = engine.take_state_changes().unwrap();
    let mut other = Engine::new(&b).unwrap();
    let err = entries
        .iter()
        .try_for_each(|(k, v)| other.apply_state_entry(k, v.as_deref()))
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot restore this plan"),
        "{err}"
    );
}

/// A plan that changes only above its stateful operators restores the old plan's state
/// and goes on from it, with the new computation on top.
#[test]
fn state_carries_over_to_a_plan_changed_above_its_stateful_operators() {
    let a = compiled("SELECT k, COUNT(*) AS n FROM e GROUP BY k");
    let b = compiled("SELECT k, COUNT(*) * 10 AS n FROM e GROUP BY k HAVING COUNT(*) > 1");
    assert_eq!(a.state_fingerprint, b.state_fingerprint);
    let schema = a.inputs[0].schema.clone();
    let mut engine = Engine::new(&a).unwrap();
    let rows = [(1, Some(1), 1), (1, Some(1), 2), (2, Some(1), 3)];
    engine.push(0, batch(&schema, &rows, 1)).unwrap();
    let mut upgraded = Engine::new(&b).unwrap();
    for (k, v) in engine.take_state_changes().unwrap() {
        upgraded.apply_state_entry(&k, v.as_deref()).unwrap();
    }
    upgraded.finish_restore().unwrap();
    let out = upgraded
        .push(0, batch(&schema, &[(1, Some(1), 4), (2, Some(1), 5)], 1))
        .unwrap();
    let rows = consolidate(&upgraded.output_schema(), &out).unwrap();
    // k=1 had 2 and now has 3 (the old 20 is retracted: the new plan's output for the old
    // state); k=2 had 1 (hidden by HAVING) and now has 2.
    assert_eq!(
        rows,
        vec![
            (vec!["1".to_owned(), "20".to_owned()], -1),
            (vec!["1".to_owned(), "30".to_owned()], 1),
            (vec!["2".to_owned(), "20".to_owned()], 1),
        ]
    );
}

/// A SUM over integers that leaves the 64-bit range is an error, not i64::MAX; the
/// engine's state is left for the caller to restore (the worker snapshots per record).
#[test]
fn an_integer_sum_that_overflows_is_an_error() {
    let c = compiled("SELECT k, SUM(v) AS s FROM e GROUP BY k");
    let mut engine = Engine::new(&c).unwrap();
    let schema = c.inputs[0].schema.clone();
    let half = i64::MAX / 2 + 1;
    engine
        .push(0, batch(&schema, &[(1, Some(half), 1)], 1))
        .unwrap();
    let err = engine
        .push(0, batch(&schema, &[(1, Some(half), 2)], 1))
        .unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    // Within range again (a retraction) is fine in a fresh engine.
    let mut engine = Engine::new(&c).unwrap();
    let out = engine
        .push(
            0,
            batch(&schema, &[(1, Some(half), 1), (1, Some(-half), 2)], 1),
        )
        .unwrap();
    assert!(!out.is_empty());
}

/// Event times in milliseconds: ordinary ones, and ones at and beyond the edges of what
/// 64-bit nanoseconds hold (the years 1677 and 2262).
fn extreme_time() -> impl Strategy<Value = i64> {
    let edge = i64::MAX / 1_000_000;
    prop_oneof![
        2 => 0i64..120_000,
        2 => (edge - 120_000)..=edge,
        2 => (-edge - 1)..=(-edge + 120_000),
        1 => prop_oneof![Just(edge + 1), Just(-edge - 2), Just(i64::MAX), Just(i64::MIN)],
    ]
}

/// Window sizes from a second to what a 64-bit nanosecond interval holds.
fn window_query() -> impl Strategy<Value = String> {
    let size = prop_oneof![
        Just("INTERVAL '1' SECOND"),
        Just("INTERVAL '1' MINUTE"),
        Just("INTERVAL '30' DAY"),
        Just("INTERVAL '36500' DAY"),
        Just("INTERVAL '100000' DAY"),
    ];
    (0usize..3, size).prop_map(|(kind, size)| match kind {
        0 => format!("SELECT k, window_start, window_end, COUNT(*) AS n FROM e GROUP BY k, TUMBLE(ts, {size})"),
        1 => format!("SELECT k, window_start, COUNT(*) AS n FROM e GROUP BY k, HOP(ts, INTERVAL '1' SECOND, {size})"),
        _ => format!("SELECT k, window_start, window_end, SUM(v) AS s FROM e GROUP BY k, SESSION(ts, {size})"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, .. ProptestConfig::default() })]

    /// Windows over times near the limits of time never panic (tests run with overflow
    /// checks) nor produce a wrapped window: each push either works or names the problem.
    #[test]
    fn windows_at_the_limits_of_time_fail_clearly_or_work(
        sql in window_query(),
        times in prop::collection::vec(extreme_time(), 1..6),
    ) {
        // A query the compiler refuses (an interval too long) is its own error, tested there.
        let Ok(c) = compile(&sql, &inputs_for_windows(), &CompileOptions::new("ns")) else {
            return Ok(());
        };
        let mut engine = Engine::new(&c).expect("engine");
        let i = c.inputs.iter().position(|x| x.name == "e").expect("input e");
        for t in times {
            let rows = [(1, Some(1), t)];
            match engine.push(i, batch(&c.inputs[i].schema, &rows, 1)) {
                Ok(out) => {
                    let rows = consolidate(&engine.output_schema(), &out).expect("renders");
                    for (row, _) in rows {
                        prop_assert!(row.iter().all(|v| !v.contains("overflow")), "{:?}", row);
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            if let Err(e) = engine.advance_watermark(i, t.saturating_mul(1_000_000)) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

fn inputs_for_windows() -> Vec<StreamInput> {
    compiled("SELECT k FROM e").inputs.clone()
}

#[test]
fn an_integer_sum_that_leaves_64_bits_when_sessions_merge_is_an_error_not_clamped() {
    let c = compiled(
        "SELECT k, window_start, SUM(v) AS s FROM e GROUP BY k, SESSION(ts, INTERVAL '6' SECOND)",
    );
    let mut engine = Engine::new(&c).expect("engine");
    let i = c
        .inputs
        .iter()
        .position(|x| x.name == "e")
        .expect("input e");
    let schema = c.inputs[i].schema.clone();
    // Two sessions, [0s, 6s) and [10s, 16s), then a row at 5s with no value bridges them.
    engine
        .push(i, batch(&schema, &[(1, Some(i64::MAX - 10), 0)], 1))
        .expect("first session");
    engine
        .push(i, batch(&schema, &[(1, Some(100), 10_000)], 1))
        .expect("second session");
    let error = engine
        .push(i, batch(&schema, &[(1, None, 5_000)], 1))
        .expect_err("the merged SUM does not fit in 64 bits");
    assert!(
        error.to_string().contains("overflowed the 64-bit range"),
        "{error}"
    );
}

/// Where a batch must be cut so lateness is judged record by record: rows behind the
/// watermark the rows before them imply, with that watermark; none for a batch in order,
/// and none for a plan that never finds a record late.
#[test]
fn a_batch_is_cut_before_each_row_behind_the_rows_before_it() {
    let c = compiled("SELECT k, COUNT(*) AS n FROM e GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)");
    let engine = Engine::new(&c).expect("engine");
    let schema = c.inputs[0].schema.clone();
    let rows = [
        (1, None, 10_000),
        (1, None, 70_000),
        (1, None, 20_000),
        (1, None, 130_000),
    ];
    let cuts = engine
        .behind_earlier_rows(0, &batch(&schema, &rows, 1).data)
        .expect("event times");
    assert_eq!(cuts, vec![(2, 70_000_000_000)]);
    let in_order = [(1, None, 10_000), (1, None, 70_000), (1, None, 130_000)];
    assert!(
        engine
            .behind_earlier_rows(0, &batch(&schema, &in_order, 1).data)
            .expect("event times")
            .is_empty()
    );
    let stateless = compiled("SELECT k FROM e");
    assert!(
        Engine::new(&stateless)
            .expect("engine")
            .behind_earlier_rows(0, &batch(&schema, &rows, 1).data)
            .expect("event times")
            .is_empty()
    );
}
