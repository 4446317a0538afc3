//! The workers' health as their `/metrics` show it: dead letters rising and consumer lag
//! growing make a Transform `Degraded`, beside crash-looping pods.
//!
//! Each reconcile of a Transform whose workers run reads every ready worker's `/metrics`
//! (on its pod IP) and keeps a short history per Transform in memory; what it concludes
//! is pure ([`judge`]). A new operator replica starts with no history and judges again
//! after a few samples.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One reading of a Transform's workers, summed over them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Dead letters written so far.
    pub dead_letters: f64,
    /// Records behind the end of the input partitions.
    pub lag: f64,
}

/// How many samples make a trend.
pub const TREND: usize = 3;
/// Lag below this is never called growing.
pub const LAG_FLOOR: f64 = 1_000.0;

/// What the history says, if anything is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing seen.
    Healthy,
    /// Dead letters were written since the previous sample.
    DeadLettersRising(u64),
    /// The lag grew over the last [`TREND`] samples and is above [`LAG_FLOOR`].
    LagGrowing(u64),
}

/// Judges a history, oldest first.
pub fn judge(history: &VecDeque<Sample>) -> Verdict {
    let n = history.len();
    if n >= 2 {
        let (prev, last) = (history[n - 2], history[n - 1]);
        // A worker restart resets its counters: only an increase counts.
        if last.dead_letters > prev.dead_letters {
            return Verdict::DeadLettersRising((last.dead_letters - prev.dead_letters) as u64);
        }
    }
    if n >= TREND {
        let recent: Vec<f64> = history.iter().skip(n - TREND).map(|s| s.lag).collect();
        if recent.windows(2).all(|w| w[1] > w[0]) && recent[TREND - 1] > LAG_FLOOR {
            return Verdict::LagGrowing(recent[TREND - 1] as u64);
        }
    }
    Verdict::Healthy
}

/// Histories per Transform (`namespace/name`).
#[derive(Default)]
pub struct Histories {
    by_transform: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Histories {
    /// Adds `sample` unless the last one is younger than `every`, and judges.
    pub fn record(&self, id: &str, sample: Option<Sample>, every: Duration) -> Verdict {
        let mut all = self.by_transform.lock().unwrap_or_else(|p| p.into_inner());
        let history = all.entry(id.to_owned()).or_default();
        if let Some(s) = sample
            && history
                .back()
                .is_none_or(|l| s.at.duration_since(l.at) >= every)
        {
            history.push_back(s);
            while history.len() > TREND {
                history.pop_front();
            }
        }
        judge(history)
    }

    /// Whether a new sample of `id` is due (none yet, or the last one is `every` old):
    /// reconciles come more often than samples, and a sample costs a request per worker.
    pub fn due(&self, id: &str, every: Duration) -> bool {
        let all = self.by_transform.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id)
            .and_then(VecDeque::back)
            .is_none_or(|l| l.at.elapsed() >= every)
    }

    /// Forgets a Transform (deleted, or its workers stopped).
    pub fn forget(&self, id: &str) {
        let mut all = self.by_transform.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(id);
    }
}

/// Reads and sums the metrics of the ready pods; `None` if no pod answered.
pub async fn sample(pods: &[Pod], port: i32) -> Option<Sample> {
    let mut total = Sample {
        at: Instant::now(),
        dead_letters: 0.0,
        lag: 0.0,
    };
    let mut answered = false;
    for pod in pods {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if !ready {
            continue;
        }
        let Some(text) = get_metrics(&ip, port).await else {
            continue;
        };
        answered = true;
        total.dead_letters += sum(&text, "weir_worker_dead_letters_total");
        total.lag += sum(&text, "weir_worker_consumer_lag");
    }
    answered.then_some(total)
}

/// The sum of the samples of metric `name` in Prometheus text.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get_metrics(ip: &str, port: i32) -> Option<String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((ip, u16::try_from(port).ok()?))
            .await
            .ok()?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64, dead: f64, lag: f64, start: Instant) -> Sample {
        Sample {
            at: start + Duration::from_secs(secs),
            dead_letters: dead,
            lag,
        }
    }

    #[test]
    fn rising_dead_letters_and_growing_lag_are_seen() {
        let t = Instant::now();
        let h: VecDeque<Sample> = [s(0, 5.0, 10.0, t), s(30, 9.0, 10.0, t)].into();
        assert_eq!(judge(&h), Verdict::DeadLettersRising(4));
        let h: VecDeque<Sample> = [s(0, 9.0, 10.0, t), s(30, 9.0, 10.0, t)].into();
        assert_eq!(judge(&h), Verdict::Healthy);
        // A restart resets the counter: not a rise.
        let h: VecDeque<Sample> = [s(0, 9.0, 0.0, t), s(30, 2.0, 0.0, t)].into();
        assert_eq!(judge(&h), Verdict::Healthy);
        let h: VecDeque<Sample> = [
            s(0, 0.0, 900.0, t),
            s(30, 0.0, 1500.0, t),
            s(60, 0.0, 4000.0, t),
        ]
        .into();
        assert_eq!(judge(&h), Verdict::LagGrowing(4000));
        let h: VecDeque<Sample> = [
            s(0, 0.0, 900.0, t),
            s(30, 0.0, 5000.0, t),
            s(60, 0.0, 4000.0, t),
        ]
        .into();
        assert_eq!(judge(&h), Verdict::Healthy);
    }

    #[test]
    fn samples_are_spaced_and_the_history_is_bounded() {
        let h = Histories::default();
        let t = Instant::now();
        assert!(h.due("n/t", Duration::from_secs(10)));
        h.record(
            "n/t",
            Some(s(0, 1.0, 0.0, Instant::now())),
            Duration::from_secs(10),
        );
        assert!(!h.due("n/t", Duration::from_secs(10)));
        let h = Histories::default();
        h.record("n/t", Some(s(0, 1.0, 0.0, t)), Duration::from_secs(10));
        // Too soon: ignored.
        assert_eq!(
            h.record("n/t", Some(s(5, 3.0, 0.0, t)), Duration::from_secs(10)),
            Verdict::Healthy
        );
        assert_eq!(
            h.record("n/t", Some(s(10, 3.0, 0.0, t)), Duration::from_secs(10)),
            Verdict::DeadLettersRising(2)
        );
        for i in 2..10 {
            h.record("n/t", Some(s(10 * i, 3.0, 0.0, t)), Duration::from_secs(10));
        }
        assert_eq!(h.by_transform.lock().unwrap()["n/t"].len(), TREND);
    }

    #[test]
    fn metric_sums_match_whole_names() {
        let text = "weir_worker_dead_letters_total{stage=\"decode\"} 3\n\
                    weir_worker_dead_letters_total{stage=\"engine\"} 2\n\
                    weir_worker_dead_letters_totalx 100\n\
                    weir_worker_consumer_lag{topic=\"a\",partition=\"0\"} 7\n";
        assert_eq!(sum(text, "weir_worker_dead_letters_total"), 5.0);
        assert_eq!(sum(text, "weir_worker_consumer_lag"), 7.0);
    }
}
