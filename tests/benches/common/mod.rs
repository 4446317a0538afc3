//! What the operator benchmarks share.

use futures::StreamExt;

/// Runs `requests` with at most `in_flight` at once, printing each failure (a benchmark
/// goes on: its figures then show the failures' cost).
pub async fn run_all<F, T, E>(requests: impl IntoIterator<Item = F>, in_flight: usize, what: &str)
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    futures::stream::iter(requests)
        .buffer_unordered(in_flight)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("{what} failed: {e}");
            }
        })
        .await;
}
