//! Nexmark q0, q1, q2, q3, q4, q5, q7 and q8 through the incremental engine, on one
//! thread, over events from the `nexmark` crate pre-generated into Arrow batches; and,
//! in the same run, the same queries as batch queries in DataFusion over the same
//! events (one partition, one thread). Prints events per second per core and the ratio.
//!
//! `cargo bench -p weir-engine --bench nexmark` (events: WEIR_NEXMARK_EVENTS, default
//! 1,000,000; batch size: 8,192 events; WEIR_NEXMARK_QUERIES=q5,q7 picks queries). The
//! generator writes US states in lower case, so q3 filters on 'or', 'id' and 'ca'.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use nexmark::event::Event;
use weir_engine::sql::{CompileOptions, StreamInput, compile};
use weir_engine::{ChangeBatch, Engine};

const BATCH: usize = 8192;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn schemas() -> [SchemaRef; 3] {
    let s = |f: Vec<(&str, DataType)>| {
        Arc::new(Schema::new(
            f.into_iter()
                .map(|(n, t)| Field::new(n, t, false))
                .collect::<Vec<_>>(),
        ))
    };
    use DataType::{Int64, Utf8};
    [
        s(vec![
            ("id", Int64),
            ("name", Utf8),
            ("email_address", Utf8),
            ("credit_card", Utf8),
            ("city", Utf8),
            ("state", Utf8),
            ("date_time", ts()),
            ("extra", Utf8),
        ]),
        s(vec![
            ("id", Int64),
            ("item_name", Utf8),
            ("description", Utf8),
            ("initial_bid", Int64),
            ("reserve", Int64),
            ("date_time", ts()),
            ("expires", ts()),
            ("seller", Int64),
            ("category", Int64),
            ("extra", Utf8),
        ]),
        s(vec![
            ("auction", Int64),
            ("bidder", Int64),
            ("price", Int64),
            ("channel", Utf8),
            ("url", Utf8),
            ("date_time", ts()),
            ("extra", Utf8),
        ]),
    ]
}

fn strings<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}
fn ints(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}
fn times(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(v).with_timezone("UTC"))
}

/// One chunk of events as up to three batches (persons, auctions, bids) and its newest
/// event time.
struct Chunk {
    batches: [Option<RecordBatch>; 3],
    newest_ms: i64,
}

fn generate(n: usize) -> Vec<Chunk> {
    let [ps, as_, bs] = schemas();
    // `EventGenerator::default()` has a step of 0 and repeats the first event forever.
    let events: Vec<Event> =
        nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default())
            .take(n)
            .collect();
    events
        .chunks(BATCH)
        .map(|chunk| {
            let mut p = Vec::new();
            let mut a = Vec::new();
            let mut b = Vec::new();
            let mut newest = 0i64;
            for e in chunk {
                match e {
                    Event::Person(x) => {
                        newest = newest.max(x.date_time as i64);
                        p.push(x)
                    }
                    Event::Auction(x) => {
                        newest = newest.max(x.date_time as i64);
                        a.push(x)
                    }
                    Event::Bid(x) => {
                        newest = newest.max(x.date_time as i64);
                        b.push(x)
                    }
                }
            }
            let person = (!p.is_empty()).then(|| {
                RecordBatch::try_new(
                    ps.clone(),
                    vec![
                        ints(p.iter().map(|x| x.id as i64)),
                        strings(p.iter().map(|x| x.name.as_str())),
                        strings(p.iter().map(|x| x.email_address.as_str())),
                        strings(p.iter().map(|x| x.credit_card.as_str())),
                        strings(p.iter().map(|x| x.city.as_str())),
                        strings(p.iter().map(|x| x.state.as_str())),
                        times(p.iter().map(|x| x.date_time as i64)),
                        strings(p.iter().map(|x| x.extra.as_str())),
                    ],
                )
                .expect("person batch")
            });
            let auction = (!a.is_empty()).then(|| {
                RecordBatch::try_new(
                    as_.clone(),
                    vec![
                        ints(a.iter().map(|x| x.id as i64)),
                        strings(a.iter().map(|x| x.item_name.as_str())),
                        strings(a.iter().map(|x| x.description.as_str())),
                        ints(a.iter().map(|x| x.initial_bid as i64)),
                        ints(a.iter().map(|x| x.reserve as i64)),
                        times(a.iter().map(|x| x.date_time as i64)),
                        times(a.iter().map(|x| x.expires as i64)),
                        ints(a.iter().map(|x| x.seller as i64)),
                        ints(a.iter().map(|x| x.category as i64)),
                        strings(a.iter().map(|x| x.extra.as_str())),
                    ],
                )
                .expect("auction batch")
            });
            let bid = (!b.is_empty()).then(|| {
                RecordBatch::try_new(
                    bs.clone(),
                    vec![
                        ints(b.iter().map(|x| x.auction as i64)),
                        ints(b.iter().map(|x| x.bidder as i64)),
                        ints(b.iter().map(|x| x.price as i64)),
                        strings(b.iter().map(|x| x.channel.as_str())),
                        strings(b.iter().map(|x| x.url.as_str())),
                        times(b.iter().map(|x| x.date_time as i64)),
                        strings(b.iter().map(|x| x.extra.as_str())),
                    ],
                )
                .expect("bid batch")
            });
            Chunk {
                batches: [person, auction, bid],
                newest_ms: newest,
            }
        })
        .collect()
}

/// (name, Weir SQL, DataFusion batch SQL).
const QUERIES: &[(&str, &str, &str)] = &[
    (
        "q0",
        "SELECT auction, bidder, price, date_time FROM bid",
        "SELECT auction, bidder, price, date_time FROM bid",
    ),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
    ),
    (
        "q2",
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    ),
    (
        "q3",
        "SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id \
         WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca')",
        "SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id \
         WHERE a.category = 10 AND (p.state = 'or' OR p.state = 'id' OR p.state = 'ca')",
    ),
    (
        "q4",
        "SELECT q.category, AVG(q.final) AS avg_price FROM (SELECT MAX(b.price) AS final, a.category \
         FROM auction a JOIN bid b ON a.id = b.auction \
         WHERE b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id, a.category) q \
         GROUP BY q.category",
        "SELECT q.category, AVG(q.final) AS avg_price FROM (SELECT MAX(b.price) AS final, a.category \
         FROM auction a JOIN bid b ON a.id = b.auction \
         WHERE b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id, a.category) q \
         GROUP BY q.category",
    ),
    (
        "q5",
        "WITH ab AS (SELECT auction, COUNT(*) AS num, window_end AS wend FROM bid \
         GROUP BY auction, HOP(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)) \
         SELECT ab.auction, ab.num, ab.wend FROM ab JOIN (SELECT window_start AS wend, MAX(num) AS maxn \
         FROM ab GROUP BY TUMBLE(wend, INTERVAL '2' SECOND)) mb ON ab.wend = mb.wend AND ab.num >= mb.maxn",
        "WITH hop AS (\
           SELECT auction, date_bin(INTERVAL '2 seconds', date_time) + INTERVAL '10 seconds' AS wend FROM bid UNION ALL \
           SELECT auction, date_bin(INTERVAL '2 seconds', date_time) + INTERVAL '8 seconds' FROM bid UNION ALL \
           SELECT auction, date_bin(INTERVAL '2 seconds', date_time) + INTERVAL '6 seconds' FROM bid UNION ALL \
           SELECT auction, date_bin(INTERVAL '2 seconds', date_time) + INTERVAL '4 seconds' FROM bid UNION ALL \
           SELECT auction, date_bin(INTERVAL '2 seconds', date_time) + INTERVAL '2 seconds' FROM bid), \
         ab AS (SELECT auction, COUNT(*) AS num, wend FROM hop GROUP BY auction, wend) \
         SELECT ab.auction, ab.num, ab.wend FROM ab JOIN (SELECT wend, MAX(num) AS maxn FROM ab GROUP BY wend) mb \
         ON ab.wend = mb.wend AND ab.num >= mb.maxn",
    ),
    (
        "q7",
        "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b JOIN (SELECT MAX(price) AS maxprice, \
         window_end AS wend FROM bid GROUP BY TUMBLE(date_time, INTERVAL '10' SECOND)) m \
         ON b.price = m.maxprice AND b.date_time BETWEEN m.wend - INTERVAL '10' SECOND AND m.wend",
        "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b JOIN (SELECT MAX(price) AS maxprice, \
         date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS wend FROM bid \
         GROUP BY date_bin(INTERVAL '10 seconds', date_time)) m \
         ON b.price = m.maxprice AND b.date_time BETWEEN m.wend - INTERVAL '10' SECOND AND m.wend",
    ),
    (
        "q8",
        "SELECT p.id, p.name, p.starttime FROM (SELECT id, name, window_start AS starttime FROM person \
         GROUP BY id, name, TUMBLE(date_time, INTERVAL '10' SECOND)) p JOIN (SELECT seller, \
         window_start AS starttime FROM auction GROUP BY seller, TUMBLE(date_time, INTERVAL '10' SECOND)) a \
         ON p.id = a.seller AND p.starttime = a.starttime",
        "SELECT p.id, p.name, p.starttime FROM (SELECT id, name, date_bin(INTERVAL '10 seconds', date_time) AS starttime \
         FROM person GROUP BY id, name, date_bin(INTERVAL '10 seconds', date_time)) p JOIN (SELECT seller, \
         date_bin(INTERVAL '10 seconds', date_time) AS starttime FROM auction \
         GROUP BY seller, date_bin(INTERVAL '10 seconds', date_time)) a \
         ON p.id = a.seller AND p.starttime = a.starttime",
    ),
];

/// Runs a query through the engine; returns (seconds, net output rows).
fn run_weir(sql: &str, chunks: &[Chunk]) -> (f64, i64) {
    let [ps, as_, bs] = schemas();
    let names = ["person", "auction", "bid"];
    let inputs: Vec<StreamInput> = [ps, as_, bs]
        .into_iter()
        .zip(names)
        .map(|(s, n)| StreamInput::new("nexmark", n, s).with_event_time("date_time", 0))
        .collect();
    let compiled = compile(sql, &inputs, &CompileOptions::new("nexmark")).expect("compiles");
    let index: Vec<Option<usize>> = names
        .iter()
        .map(|n| compiled.inputs.iter().position(|i| i.name == *n))
        .collect();
    let mut engine = Engine::new(&compiled).expect("engine");
    let mut rows = 0i64;
    let mut count = |out: Vec<ChangeBatch>| {
        for b in out {
            rows += b.weight_vec().iter().sum::<i64>();
        }
    };
    let start = Instant::now();
    for c in chunks {
        for (k, b) in c.batches.iter().enumerate() {
            if let (Some(b), Some(i)) = (b, index[k]) {
                count(
                    engine
                        .push(i, ChangeBatch::inserts(b.clone()))
                        .expect("push"),
                );
            }
        }
        for i in index.iter().flatten() {
            count(
                engine
                    .advance_watermark(*i, c.newest_ms * 1_000_000)
                    .expect("watermark"),
            );
        }
    }
    count(engine.finish().expect("finish"));
    (start.elapsed().as_secs_f64(), rows)
}

/// Runs the query as a DataFusion batch query; returns (seconds, output rows).
fn run_datafusion(rt: &tokio::runtime::Runtime, sql: &str, chunks: &[Chunk]) -> (f64, i64) {
    let config = SessionConfig::new().with_target_partitions(1);
    let ctx = SessionContext::new_with_config(config);
    let schemas = schemas();
    for (k, name) in ["person", "auction", "bid"].iter().enumerate() {
        let batches: Vec<RecordBatch> =
            chunks.iter().filter_map(|c| c.batches[k].clone()).collect();
        let table = MemTable::try_new(schemas[k].clone(), vec![batches]).expect("table");
        ctx.register_table(*name, Arc::new(table))
            .expect("register");
    }
    rt.block_on(async {
        let start = Instant::now();
        let df = ctx.sql(sql).await.expect("plans");
        let out = df.collect().await.expect("runs");
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        (start.elapsed().as_secs_f64(), rows as i64)
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("WEIR_NEXMARK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let chunks = generate(n);
    let count = |k: usize| -> usize {
        chunks
            .iter()
            .filter_map(|c| c.batches[k].as_ref())
            .map(RecordBatch::num_rows)
            .sum()
    };
    eprintln!(
        "generated {n} Nexmark events ({} persons, {} auctions, {} bids) in {:.1}s",
        count(0),
        count(1),
        count(2),
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| query | Weir events/s/core | DataFusion batch events/s/core | ratio | output rows (Weir / DataFusion) |"
    );
    println!("|---|---:|---:|---:|---|");
    // WEIR_NEXMARK_QUERIES=q5,q7 runs only those.
    let only = std::env::var("WEIR_NEXMARK_QUERIES").ok();
    for (name, weir_sql, df_sql) in QUERIES {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|q| q == *name))
        {
            continue;
        }
        // Best of three, to damp a noisy machine.
        let best = |f: &dyn Fn() -> (f64, i64)| {
            let mut runs: Vec<(f64, i64)> = (0..3).map(|_| f()).collect();
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            runs[0]
        };
        let (ws, wrows) = best(&|| run_weir(weir_sql, &chunks));
        let (ds, drows) = best(&|| run_datafusion(&rt, df_sql, &chunks));
        let weps = n as f64 / ws;
        let deps = n as f64 / ds;
        println!(
            "| {name} | {:.2} M | {:.2} M | {:.2}× | {wrows} / {drows}{} |",
            weps / 1e6,
            deps / 1e6,
            weps / deps,
            if wrows == drows { "" } else { " (differ)" }
        );
    }
}
