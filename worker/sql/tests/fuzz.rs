//! Fuzzing the compiler with generated SQL: arbitrary text, and token soups built from
//! SQL keywords, names, operators, window calls and literals, and well-formed queries over
//! random expression trees. Compiling never panics;
//! every failure is a `CompileError` with a message.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use weir_sql::{CompileOptions, StreamInput, compile};

fn inputs() -> Vec<StreamInput> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let s = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("d", DataType::Decimal128(10, 2), true),
        Field::new("ts", ts, false),
    ]));
    vec![
        StreamInput::new("ns", "s", s.clone()).with_event_time("ts", 1000),
        StreamInput::new("ns", "t", s).with_key(["k"]).as_table(),
    ]
}

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP BY",
    "HAVING",
    "ORDER BY",
    "LIMIT",
    "JOIN",
    "LEFT JOIN",
    "ON",
    "AND",
    "OR",
    "NOT",
    "UNION ALL",
    "WITH",
    "AS",
    "DISTINCT",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "IS NULL",
    "IN",
    "BETWEEN",
    "(",
    ")",
    ",",
    "*",
    "+",
    "-",
    "/",
    "=",
    "<",
    ">=",
    "s",
    "t",
    "ns.s",
    "ns.t",
    "k",
    "v",
    "d",
    "ts",
    "s.k",
    "t.v",
    "window_start",
    "window_end",
    "COUNT(*)",
    "SUM(v)",
    "MIN(k)",
    "MAX(d)",
    "AVG(v)",
    "COUNT(DISTINCT k)",
    "TUMBLE(ts, INTERVAL '1' MINUTE)",
    "HOP(ts, INTERVAL '1' SECOND, INTERVAL '5' SECOND)",
    "SESSION(ts, INTERVAL '10' SECOND)",
    "TUMBLE(",
    "INTERVAL '1' DAY",
    "1",
    "0",
    "-1",
    "'x'",
    "NULL",
    "TRUE",
    "CAST(v AS VARCHAR)",
    "now()",
    "random()",
    "x",
    ";",
    "\n",
    "OVER ()",
    "row_number()",
    "EXISTS",
    "(SELECT k FROM s)",
];

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..30).prop_map(|t| t.join(" "))
}

/// Mostly well-formed queries with a random piece swapped in.
fn near_valid() -> impl Strategy<Value = String> {
    let select = prop::sample::select(vec![
        "k",
        "v",
        "k, COUNT(*) AS n",
        "window_start, SUM(v) AS s",
        "*",
        "s.k, t.v",
    ]);
    let from = prop::sample::select(vec![
        "s",
        "ns.t",
        "s JOIN t ON s.k = t.k",
        "(SELECT * FROM s) q",
        "s, t",
    ]);
    let clause = prop::sample::select(vec![
        "",
        "WHERE v > 1",
        "GROUP BY k",
        "GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
        "GROUP BY k HAVING COUNT(*) > 1",
        "ORDER BY k",
        "GROUP BY SESSION(ts, INTERVAL '1' SECOND), k",
    ]);
    // Noise half the time, so most queries get past the parser into planning and
    // lowering, where a panic would hide.
    let noise = prop_oneof![Just(String::new()), soup()];
    (select, from, clause, noise)
        .prop_map(|(s, f, c, noise)| format!("SELECT {s} FROM {f} {c} {noise}"))
}

/// Random expression trees over the stream's columns: operators, functions, CASE, CAST.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "k",
        "v",
        "d",
        "ts",
        "1",
        "0",
        "-3",
        "2.5",
        "'x'",
        "NULL",
        "TRUE",
        "INTERVAL '1' MINUTE",
    ])
    .prop_map(str::to_owned);
    leaf.prop_recursive(4, 24, 3, |inner| {
        let op = prop::sample::select(vec![
            "+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR", "||",
        ]);
        let func = prop::sample::select(vec![
            "abs",
            "upper",
            "lower",
            "length",
            "round",
            "date_trunc('hour', ",
            "coalesce",
            "nullif",
            "concat",
        ]);
        let ty = prop::sample::select(vec![
            "BIGINT",
            "VARCHAR",
            "DOUBLE",
            "TIMESTAMP",
            "DECIMAL(10,2)",
        ]);
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            (func, inner.clone(), inner.clone()).prop_map(|(f, a, b)| match f {
                "coalesce" | "nullif" | "concat" => format!("{f}({a}, {b})"),
                "date_trunc('hour', " => format!("{f}{a})"),
                _ => format!("{f}({a})"),
            }),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("CASE WHEN {c} THEN {a} ELSE {b} END")),
            (inner.clone(), ty).prop_map(|(a, t)| format!("CAST({a} AS {t})")),
            inner.clone().prop_map(|a| format!("{a} IS NULL")),
            inner.prop_map(|a| format!("NOT ({a} IS NULL)")),
        ]
    })
}

/// Well-formed queries built from random expressions.
fn generated_query() -> impl Strategy<Value = String> {
    (expr(), expr(), expr(), 0..4usize).prop_map(|(a, b, c, shape)| match shape {
        0 => format!("SELECT {a} AS x, {b} AS y FROM s WHERE ({c}) IS NOT NULL"),
        1 => format!(
            "SELECT {a} AS g, COUNT(*) AS n, SUM(s.v) AS t FROM s GROUP BY {a} \
             HAVING MAX({b}) IS NOT NULL"
        ),
        2 => format!(
            "SELECT window_start, {a} AS g, MAX({b}) AS m FROM s \
             GROUP BY {a}, TUMBLE(ts, INTERVAL '1' MINUTE)"
        ),
        _ => format!("SELECT s.k, {a} AS x FROM s JOIN t ON s.k = t.k AND ({b}) IS NOT NULL"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(sql in "\\PC{0,80}") {
        let _ = compile(&sql, &inputs(), &CompileOptions::new("ns"));
    }

    #[test]
    fn token_soup_never_panics(sql in soup()) {
        if let Err(e) = compile(&sql, &inputs(), &CompileOptions::new("ns")) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn generated_expressions_never_panic(sql in generated_query()) {
        if let Err(e) = compile(&sql, &inputs(), &CompileOptions::new("ns")) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn near_valid_queries_never_panic(sql in near_valid()) {
        if let Err(e) = compile(&sql, &inputs(), &CompileOptions::new("ns")) {
            prop_assert!(!e.message.is_empty());
        }
    }
}
