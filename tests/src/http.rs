//! The test kit's HTTP client: hyper's, for the operator's and workers' health and metrics
//! endpoints and the local node's HTTP probes.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `GET http://host:port/path`: `(status, body)`, or `None` if nothing answered within
/// `timeout`.
pub async fn get(host: &str, port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let client: Client<_, Empty<&[u8]>> = Client::builder(TokioExecutor::new()).build_http();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let uri: http::Uri = format!("http://{host}:{port}{path}").parse().ok()?;
    tokio::time::timeout(timeout, async {
        let response = client.get(uri).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .ok()?
}
