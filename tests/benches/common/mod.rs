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

/// How many DataStreams and how many Transforms (all namespaces) are Ready at their
/// current generation.
pub async fn ready_counts(client: &kube::Client) -> kube::Result<(usize, usize)> {
    use kube::api::{Api, ListParams};
    use weir_crds::{DataStream, Transform};
    let streams = Api::<DataStream>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|d| weir_tests::fixtures::is_ready()(Some(d)))
        .count();
    let transforms = Api::<Transform>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|t| {
            t.status.as_ref().is_some_and(|s| {
                s.observed_generation == t.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count();
    Ok((streams, transforms))
}
