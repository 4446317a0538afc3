//! Waiting for something to become true: the one way the test kit and the tests poll.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::{Error, Result};

/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(250);

/// Calls `probe` until it returns `Ok`, whose value is returned. Each `Err` says what was
/// seen instead; when `timeout` runs out, the error names `what` and the last thing seen.
pub async fn wait_until<T, E, Fut>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl FnMut() -> Fut,
) -> Result<T>
where
    E: Display,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    poll_until(what, timeout, POLL, || {
        let look = probe();
        async move { Ok(look.await) }
    })
    .await
}

/// [`wait_until`] for a probe that can also fail for good (a process that exited while
/// starting): its `Err` ends the wait at once, `Ok(Err(seen))` looks again after `every`,
/// and a timeout is [`Error::Timeout`].
pub async fn poll_until<T, E, Fut>(
    what: impl Display,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Fut,
) -> Result<T>
where
    E: Display,
    Fut: Future<Output = Result<std::result::Result<T, E>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await? {
            Ok(value) => return Ok(value),
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Timeout(format!(
                    "{what} (waited {timeout:?}); last seen: {seen}"
                )));
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_success_or_names_what_it_waited_for() {
        let mut calls = 0;
        let got = wait_until("three calls", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("{n} calls"))
                }
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));
        let timed_out = wait_until("never", Duration::from_millis(10), || async {
            Err::<(), _>("still no")
        })
        .await
        .expect_err("times out");
        assert!(
            timed_out.to_string().contains("never") && timed_out.to_string().contains("still no")
        );
    }

    #[tokio::test]
    async fn a_failure_ends_the_wait_at_once() {
        let started = tokio::time::Instant::now();
        let got = poll_until("a process", Duration::from_secs(30), POLL, || async {
            Err::<std::result::Result<(), String>, _>(Error::Timeout("it exited".into()))
        })
        .await;
        assert!(matches!(got, Err(Error::Timeout(m)) if m == "it exited"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
