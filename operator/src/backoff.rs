//! Per-object retry delays after failures, keyed by kind, namespace and name: a Transform
//! and the DataStream it writes usually share a name, and each has delays of its own.

use std::time::Duration;

/// How long to wait before retrying an object after consecutive failures.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    fn key(obj: &k8s_openapi::api::core::v1::ObjectReference) -> String {
        format!(
            "{}/{}/{}/{}",
            obj.api_version.as_deref().unwrap_or_default(),
            obj.kind.as_deref().unwrap_or_default(),
            obj.namespace.as_deref().unwrap_or_default(),
            obj.name.as_deref().unwrap_or_default()
        )
    }

    /// Records a failure and returns the delay before the next try: 1s, 2s, 4s … 5 min.
    pub fn next(&self, obj: &k8s_openapi::api::core::v1::ObjectReference) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(Self::key(obj)).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets an object's failures after a success.
    pub fn reset(&self, obj: &k8s_openapi::api::core::v1::ObjectReference) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&Self::key(obj));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_and_resets() {
        let b = Backoff::default();
        let obj = k8s_openapi::api::core::v1::ObjectReference {
            name: Some("a".into()),
            ..Default::default()
        };
        let delays: Vec<u64> = (0..12).map(|_| b.next(&obj).as_secs()).collect();
        assert_eq!(&delays[..4], &[1, 2, 4, 8]);
        assert_eq!(*delays.last().unwrap_or(&0), 256);
        b.reset(&obj);
        assert_eq!(b.next(&obj).as_secs(), 1);
    }

    #[test]
    fn a_transform_and_a_data_stream_of_one_name_back_off_apart() {
        use kube::Resource;
        use weir_crds::data_stream::DataStream;
        use weir_crds::transform::Transform;
        // What `object_ref` gives for each kind, for shop/orders.
        fn of<K: Resource<DynamicType = ()>>() -> k8s_openapi::api::core::v1::ObjectReference {
            k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                namespace: Some("shop".into()),
                name: Some("orders".into()),
                ..Default::default()
            }
        }
        let (ds, tf) = (of::<DataStream>(), of::<Transform>());
        let b = Backoff::default();
        for _ in 0..3 {
            b.next(&ds);
        }
        // The Transform's first failure waits a second, not the DataStream's eight.
        assert_eq!(b.next(&tf).as_secs(), 1);
        assert_eq!(b.next(&ds).as_secs(), 8);
        // The Transform's success does not reset the DataStream's delays.
        b.reset(&tf);
        assert_eq!(b.next(&ds).as_secs(), 16);
    }
}
