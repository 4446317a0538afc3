//! Differential tests: for each query and random inputs (NULLs, duplicates, skewed
//! keys, table upserts and deletes), the result the engine maintains incrementally —
//! fed in randomly sized batches, with its state snapshotted and restored into a fresh
//! engine at a random point — equals the same query run as a batch query by SQLite on
//! the final input.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use rusqlite::types::ValueRef;
use weir_engine::runner::{consolidate, format_value};
use weir_engine::sql::{CompileOptions, StreamInput, compile};
use weir_engine::{ChangeBatch, Engine};

/// (k, v, s, ts ms) events of the append-only stream `t`, in event-time order.
type Event = (Option<i64>, Option<i64>, Option<&'static str>, i64);
/// Upserts (`Some((g, x))`) and deletes (`None`) of the table `u` keyed by `id`.
type TableOp = (i64, Option<(Option<i64>, Option<i64>)>);

fn schemas() -> (Arc<Schema>, Arc<Schema>) {
    let t = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]));
    let u = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("g", DataType::Int64, true),
        Field::new("x", DataType::Int64, true),
    ]));
    (t, u)
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let key = prop_oneof![3 => Just(Some(0i64)), 2 => (1i64..4).prop_map(Some), 1 => Just(None)];
    let val = prop_oneof![4 => (-5i64..6).prop_map(Some), 1 => Just(None)];
    let s = prop_oneof![Just(Some("a")), Just(Some("b")), Just(None)];
    prop::collection::vec((key, val, s, 0i64..5_000), 0..40).prop_map(|mut v| {
        // Event time only moves forward (ties allowed), so nothing is late.
        let mut t = 0;
        for e in &mut v {
            t += e.3 % 50_000;
            e.3 = t;
        }
        v
    })
}

fn table_ops() -> impl Strategy<Value = Vec<TableOp>> {
    let small = prop_oneof![4 => (0i64..3).prop_map(Some), 1 => Just(None)];
    let x = prop_oneof![4 => (-3i64..4).prop_map(Some), 1 => Just(None)];
    let op = prop_oneof![3 => (small, x).prop_map(Some), 1 => Just(None)];
    prop::collection::vec((0i64..6, op), 0..30)
}

fn event_batch(schema: &Arc<Schema>, es: &[Event]) -> ChangeBatch {
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(es.iter().map(|e| e.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(es.iter().map(|e| e.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                es.iter().map(|e| e.2).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(es.iter().map(|e| e.3).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .expect("event batch");
    ChangeBatch::inserts(batch)
}

fn table_batch(schema: &Arc<Schema>, ops: &[TableOp]) -> ChangeBatch {
    let g = ops
        .iter()
        .map(|o| o.1.and_then(|v| v.0))
        .collect::<Vec<_>>();
    let x = ops
        .iter()
        .map(|o| o.1.and_then(|v| v.1))
        .collect::<Vec<_>>();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(
                ops.iter().map(|o| o.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(g)),
            Arc::new(Int64Array::from(x)),
        ],
    )
    .expect("table batch");
    let weights = ops
        .iter()
        .map(|o| if o.1.is_some() { 1 } else { -1 })
        .collect();
    ChangeBatch::new(batch, weights)
}

/// Runs the query incrementally: table changes first (so a stream-to-table lookup sees
/// the final table, as a batch join does), then events, each in chunks of `chunk`, with a
/// snapshot and restore into a fresh engine after `restore_at` pushes.
fn incremental(
    sql: &str,
    es: &[Event],
    ops: &[TableOp],
    chunk: usize,
    restore_at: usize,
) -> Vec<String> {
    let (ts, us) = schemas();
    let t = StreamInput::new("ns", "t", ts.clone()).with_event_time("ts", 0);
    let u = StreamInput::new("ns", "u", us.clone())
        .with_key(["id"])
        .as_table();
    let compiled = compile(sql, &[t, u], &CompileOptions::new("ns")).expect("compiles");
    let input_of = |name: &str| compiled.inputs.iter().position(|i| i.name == name);
    let mut engine = Engine::new(&compiled).expect("engine");
    let mut out = Vec::new();
    let mut pushes = 0;
    let maybe_restore = |engine: &mut Engine, pushes: &mut usize| {
        *pushes += 1;
        if *pushes == restore_at {
            let snap = engine.snapshot().expect("snapshot");
            let mut fresh = Engine::new(&compiled).expect("engine");
            fresh.restore(&snap).expect("restore");
            *engine = fresh;
        }
    };
    if let Some(ui) = input_of("u") {
        for c in ops.chunks(chunk.max(1)) {
            out.extend(engine.push(ui, table_batch(&us, c)).expect("push table"));
            maybe_restore(&mut engine, &mut pushes);
        }
    }
    if let Some(ti) = input_of("t") {
        for c in es.chunks(chunk.max(1)) {
            out.extend(engine.push(ti, event_batch(&ts, c)).expect("push events"));
            let wm = c.iter().map(|e| e.3).max().unwrap_or(0) * 1_000_000;
            out.extend(engine.advance_watermark(ti, wm).expect("watermark"));
            maybe_restore(&mut engine, &mut pushes);
        }
    }
    out.extend(engine.finish().expect("finish"));
    let mut rows: Vec<String> = consolidate(&engine.output_schema(), &out)
        .expect("consolidate")
        .into_iter()
        .flat_map(|(r, w)| {
            assert!(
                w > 0,
                "the output retracted a row it never produced: {r:?} ×{w}"
            );
            std::iter::repeat_n(r.join("|"), w as usize)
        })
        .collect();
    rows.sort();
    rows
}

fn batch_sqlite(sql: &str, es: &[Event], ops: &[TableOp]) -> Vec<String> {
    let db = rusqlite::Connection::open_in_memory().expect("sqlite");
    db.execute_batch(
        "CREATE TABLE t (k INTEGER, v INTEGER, s TEXT, ts INTEGER);
         CREATE TABLE u (id INTEGER PRIMARY KEY, g INTEGER, x INTEGER);",
    )
    .expect("schema");
    for e in es {
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![e.0, e.1, e.2, e.3],
        )
        .expect("insert t");
    }
    for (id, op) in ops {
        match op {
            Some((g, x)) => db
                .execute(
                    "INSERT OR REPLACE INTO u VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, g, x],
                )
                .expect("upsert u"),
            None => db
                .execute("DELETE FROM u WHERE id = ?1", [id])
                .expect("delete u"),
        };
    }
    let mut stmt = db.prepare(sql).expect("sqlite query");
    let n = stmt.column_count();
    let mut rows: Vec<String> = stmt
        .query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i).expect("column") {
                    ValueRef::Null => "NULL".to_owned(),
                    ValueRef::Integer(v) => v.to_string(),
                    ValueRef::Real(v) => format_value(v),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Blob(_) => "BLOB".to_owned(),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .expect("run")
        .map(|r| r.expect("row"))
        .collect();
    rows.sort();
    rows
}

/// (Weir SQL, SQLite SQL): the same query in each dialect.
const QUERIES: &[(&str, &str)] = &[
    (
        "SELECT k, v, s FROM t WHERE v > 0 OR s IS NULL",
        "SELECT k, v, s FROM t WHERE v > 0 OR s IS NULL",
    ),
    (
        "SELECT k, COUNT(*) AS n, COUNT(v) AS nv, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi FROM t GROUP BY k",
        "SELECT k, COUNT(*), COUNT(v), SUM(v), MIN(v), MAX(v) FROM t GROUP BY k",
    ),
    (
        "SELECT s, COUNT(DISTINCT v) AS d, AVG(v) AS a FROM t GROUP BY s",
        "SELECT s, COUNT(DISTINCT v), AVG(v) FROM t GROUP BY s",
    ),
    (
        "SELECT COUNT(*) AS n, SUM(v) AS total FROM t",
        "SELECT COUNT(*), SUM(v) FROM t",
    ),
    (
        "SELECT g, COUNT(*) AS n, SUM(x) AS total, MIN(x) AS lo, MAX(x) AS hi, AVG(x) AS a FROM u GROUP BY g",
        "SELECT g, COUNT(*), SUM(x), MIN(x), MAX(x), AVG(x) FROM u GROUP BY g",
    ),
    (
        "SELECT MIN(x) AS lo, MAX(x) AS hi, COUNT(DISTINCT g) AS d FROM u",
        "SELECT MIN(x), MAX(x), COUNT(DISTINCT g) FROM u",
    ),
    ("SELECT DISTINCT k, s FROM t", "SELECT DISTINCT k, s FROM t"),
    ("SELECT DISTINCT g FROM u", "SELECT DISTINCT g FROM u"),
    (
        "SELECT k, SUM(v) AS total FROM t GROUP BY k HAVING COUNT(*) > 1",
        "SELECT k, SUM(v) FROM t GROUP BY k HAVING COUNT(*) > 1",
    ),
    (
        "SELECT n, COUNT(*) AS groups FROM (SELECT g, COUNT(*) AS n FROM u GROUP BY g) c GROUP BY n",
        "SELECT n, COUNT(*) FROM (SELECT g, COUNT(*) AS n FROM u GROUP BY g) GROUP BY n",
    ),
    (
        "SELECT t.k, t.v, u.x FROM t JOIN u ON t.k = u.id",
        "SELECT t.k, t.v, u.x FROM t JOIN u ON t.k = u.id",
    ),
    (
        "SELECT t.k, u.g FROM t LEFT JOIN u ON t.k = u.id",
        "SELECT t.k, u.g FROM t LEFT JOIN u ON t.k = u.id",
    ),
    (
        "SELECT a.id AS a, b.id AS b FROM u a JOIN u b ON a.g = b.g",
        "SELECT a.id, b.id FROM u a JOIN u b ON a.g = b.g",
    ),
    (
        "SELECT a.id AS a, b.x AS bx FROM u a LEFT JOIN u b ON a.g = b.x",
        "SELECT a.id, b.x FROM u a LEFT JOIN u b ON a.g = b.x",
    ),
    (
        "SELECT a.id AS a, b.id AS b FROM u a JOIN u b ON a.g = b.g AND a.x < b.x",
        "SELECT a.id, b.id FROM u a JOIN u b ON a.g = b.g AND a.x < b.x",
    ),
    (
        "SELECT k AS c FROM t WHERE v > 2 UNION ALL SELECT g FROM u",
        "SELECT k FROM t WHERE v > 2 UNION ALL SELECT g FROM u",
    ),
    (
        "SELECT CASE WHEN v > 0 THEN 'p' WHEN v < 0 THEN 'n' ELSE 'z' END AS c, COUNT(*) AS n FROM t GROUP BY CASE WHEN v > 0 THEN 'p' WHEN v < 0 THEN 'n' ELSE 'z' END",
        "SELECT CASE WHEN v > 0 THEN 'p' WHEN v < 0 THEN 'n' ELSE 'z' END, COUNT(*) FROM t GROUP BY 1",
    ),
    (
        "SELECT g, SUM(t.v) AS total FROM t JOIN u ON t.k = u.id GROUP BY g",
        "SELECT g, SUM(t.v) FROM t JOIN u ON t.k = u.id GROUP BY g",
    ),
    (
        "SELECT CAST(window_start AS BIGINT) AS ws, k, COUNT(*) AS n, SUM(v) AS total FROM t GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)",
        "SELECT (ts / 10000) * 10000, k, COUNT(*), SUM(v) FROM t GROUP BY 1, 2",
    ),
    (
        "SELECT CAST(window_start AS BIGINT) AS ws, MAX(v) AS hi FROM t GROUP BY HOP(ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)",
        "SELECT w.s, MAX(v) FROM t JOIN (SELECT DISTINCT (ts / 5000) * 5000 AS s FROM t UNION SELECT DISTINCT (ts / 5000) * 5000 - 5000 FROM t) w ON t.ts >= w.s AND t.ts < w.s + 10000 GROUP BY w.s",
    ),
    (
        "SELECT k, CAST(window_start AS BIGINT) AS ws, CAST(window_end AS BIGINT) AS we, COUNT(*) AS n, SUM(v) AS total FROM t GROUP BY k, SESSION(ts, INTERVAL '3' SECOND)",
        "WITH x AS (SELECT k, v, ts, CASE WHEN ts - LAG(ts) OVER (PARTITION BY k ORDER BY ts) < 3000 THEN 0 ELSE 1 END AS fresh FROM t), \
         y AS (SELECT k, v, ts, SUM(fresh) OVER (PARTITION BY k ORDER BY ts ROWS UNBOUNDED PRECEDING) AS sid FROM x) \
         SELECT k, MIN(ts), MAX(ts) + 3000, COUNT(*), SUM(v) FROM y GROUP BY k, sid",
    ),
    (
        "SELECT a.k, a.v AS av, b.v AS bv FROM t a JOIN t b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + INTERVAL '2' SECOND",
        "SELECT a.k, a.v, b.v FROM t a JOIN t b ON a.k = b.k AND b.ts BETWEEN a.ts AND a.ts + 2000",
    ),
    (
        "SELECT a.k, a.v AS av, b.s AS bs FROM t a LEFT JOIN t b ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '1' SECOND AND b.v > a.v",
        "SELECT a.k, a.v, b.s FROM t a LEFT JOIN t b ON a.k = b.k AND b.ts BETWEEN a.ts - 1000 AND a.ts + 1000 AND b.v > a.v",
    ),
    (
        "SELECT a.id, b.id AS other FROM u a LEFT JOIN u b ON a.g = b.g AND a.id <> b.id",
        "SELECT a.id, b.id FROM u a LEFT JOIN u b ON a.g = b.g AND a.id <> b.id",
    ),
    (
        "SELECT g, COUNT(DISTINCT x) AS d, MIN(id) AS lo FROM u GROUP BY g HAVING MAX(x) > 0",
        "SELECT g, COUNT(DISTINCT x), MIN(id) FROM u GROUP BY g HAVING MAX(x) > 0",
    ),
    (
        "WITH c AS (SELECT k, COUNT(*) AS n FROM t GROUP BY k) SELECT c.k, c.n, u.x FROM c JOIN u ON c.k = u.id",
        "WITH c AS (SELECT k, COUNT(*) AS n FROM t GROUP BY k) SELECT c.k, c.n, u.x FROM c JOIN u ON c.k = u.id",
    ),
    (
        "SELECT k, MAX(v) AS hi, MIN(s) AS lo FROM (SELECT k, v, s FROM t WHERE s IS NOT NULL UNION ALL SELECT id, x, 'u' FROM u) q GROUP BY k",
        "SELECT k, MAX(v), MIN(s) FROM (SELECT k, v, s FROM t WHERE s IS NOT NULL UNION ALL SELECT id, x, 'u' FROM u) GROUP BY k",
    ),
];

fn check(
    query: usize,
    es: &[Event],
    ops: &[TableOp],
    chunk: usize,
    restore_at: usize,
) -> Result<(), TestCaseError> {
    let (weir, sqlite) = QUERIES[query];
    let expected = batch_sqlite(sqlite, es, ops);
    let got = incremental(weir, es, ops, chunk, restore_at);
    prop_assert_eq!(&got, &expected, "query: {}", weir);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 320, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn incremental_equals_sqlite_batch(
        query in 0..QUERIES.len(),
        es in events(),
        ops in table_ops(),
        chunk in 1usize..8,
        restore_at in 0usize..12,
    ) {
        check(query, &es, &ops, chunk, restore_at)?;
    }
}

#[test]
fn every_query_agrees_on_a_fixed_input() {
    let es: Vec<Event> = (0..30)
        .map(|i| {
            (
                Some(i % 3),
                if i % 7 == 0 { None } else { Some(i % 5 - 2) },
                Some(if i % 2 == 0 { "a" } else { "b" }),
                i * 1_700,
            )
        })
        .collect();
    let ops: Vec<TableOp> = (0..20)
        .map(|i| {
            (
                i % 5,
                if i % 6 == 5 {
                    None
                } else {
                    Some((Some(i % 2), Some(i - 8)))
                },
            )
        })
        .collect();
    for q in 0..QUERIES.len() {
        for chunk in [1, 3, 50] {
            check(q, &es, &ops, chunk, 2).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
