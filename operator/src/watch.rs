//! The operator's watches of its own resources, built so that no one object can stop them.
//!
//! A typed watch fails its whole list when one stored object does not decode, and with it
//! every reconcile in the cluster. These watches list and watch DataStreams and Transforms
//! as untyped JSON and decode each object on its own: an object the operator's types cannot
//! read (stored before the CRD checked that field, or written for a newer Weir) is reported
//! on itself — its `Ready` condition says `InvalidSpec` and names the field — and left out,
//! while every other object is reconciled as usual. Managed fields and kubectl's
//! last-applied annotation are dropped before objects are cached: the operator never reads
//! them, and they are often most of an object's size.
//!
//! Each watch's errors are tracked for `/healthz` ([`WatchHealth`]): a watch that keeps
//! failing for longer than the stall timeout makes the operator unhealthy, so that the
//! kubelet restarts it instead of leaving a controller that no longer sees changes.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::FIELD_MANAGER;

/// kubectl's copy of the last applied object, kept on objects applied client-side.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How the operator's watches are doing, for `/healthz`.
#[derive(Debug)]
pub struct WatchHealth {
    stall: Duration,
    watches: Mutex<BTreeMap<&'static str, Failing>>,
}

#[derive(Debug, Default)]
struct Failing {
    /// When the watch started failing without a success since; `None` while it works.
    since: Option<Instant>,
    last_error: String,
}

impl WatchHealth {
    /// Health that turns bad once a watch has failed for longer than `stall` without pause.
    pub fn new(stall: Duration) -> Self {
        Self {
            stall,
            watches: Mutex::default(),
        }
    }

    fn record(&self, watch: &'static str, result: Result<(), String>) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let state = watches.entry(watch).or_default();
        match result {
            Ok(()) => state.since = None,
            Err(e) => {
                state.since.get_or_insert_with(Instant::now);
                state.last_error = e;
            }
        }
    }

    /// Why the operator is unhealthy: a watch that has failed for longer than the stall
    /// timeout, with its last error; `None` when every watch works.
    pub fn wedged(&self) -> Option<String> {
        self.wedged_at(Instant::now())
    }

    fn wedged_at(&self, now: Instant) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.iter().find_map(|(name, state)| {
            let since = state.since?;
            let failing = now.saturating_duration_since(since);
            (failing > self.stall).then(|| {
                format!(
                    "the {name} watch has failed for {}s: {}",
                    failing.as_secs(),
                    state.last_error
                )
            })
        })
    }
}

/// Watches every `K` in the cluster, decoding each object on its own: an object that does
/// not decode is reported on itself and left out. `name` names the watch in `/healthz`.
/// Feed it to a reflector, then to a controller.
pub fn events<K>(
    client: kube::Client,
    name: &'static str,
    config: watcher::Config,
    health: Arc<WatchHealth>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + 'static,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let reporter = Reporter {
        client,
        resource,
        reported: Arc::default(),
    };
    watcher(api, config)
        .default_backoff()
        .inspect(move |r| {
            health.record(name, r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        })
        .try_filter_map(move |event| {
            let event = decode_event::<K>(event, &reporter);
            futures::future::ready(Ok(event))
        })
}

/// Decodes the objects of one watch event; undecodable ones are reported and dropped.
fn decode_event<K>(
    event: watcher::Event<DynamicObject>,
    reporter: &Reporter,
) -> Option<watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    use watcher::Event::*;
    let decode = |obj: DynamicObject, report: bool| match decode::<K>(obj) {
        Ok(k) => Some(k),
        Err(failed) => {
            if report {
                reporter.report(failed);
            }
            None
        }
    };
    Some(match event {
        Init => Init,
        InitDone => InitDone,
        InitApply(obj) => InitApply(decode(obj, true)?),
        Apply(obj) => Apply(decode(obj, true)?),
        // An object that never decoded was never cached: nothing to forget.
        Delete(obj) => Delete(decode(obj, false)?),
    })
}

/// Decodes one object into `K` without what the operator never reads; on failure, the
/// object and a message naming the field that failed.
pub fn decode<K: DeserializeOwned>(
    mut obj: DynamicObject,
) -> Result<K, Box<(DynamicObject, String)>> {
    obj.metadata.managed_fields = None;
    if let Some(annotations) = obj.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let value = match serde_json::to_value(&obj) {
        Ok(v) => v,
        Err(e) => return Err(Box::new((obj, e.to_string()))),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let why = format!(
            "the stored object cannot be read by this operator at {path}: {} (it was stored \
             before the CRD checked this, or for another version of Weir; fix it and apply it \
             again)",
            e.into_inner()
        );
        Box::new((obj, why))
    })
}

/// Writes the `InvalidSpec` condition on objects that do not decode, once per version.
#[derive(Clone)]
struct Reporter {
    client: kube::Client,
    resource: ApiResource,
    reported: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Reporter {
    fn report(&self, failed: Box<(DynamicObject, String)>) {
        let (obj, why) = *failed;
        let meta = &obj.metadata;
        let key = (
            meta.uid.clone().unwrap_or_default(),
            meta.resource_version.clone().unwrap_or_default(),
        );
        if !self
            .reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
        {
            return;
        }
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            return;
        };
        warn!(%namespace, %name, kind = %self.resource.kind, %why, "skipping an object that does not decode");
        let generation = meta.generation;
        let patch = serde_json::json!({
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "status": {
                "observedGeneration": generation,
                "conditions": [{
                    "type": "Ready",
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": why,
                    "observedGeneration": generation,
                    "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
                }],
            },
        });
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &self.resource);
        tokio::spawn(async move {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            if let Err(e) = api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                warn!(%namespace, %name, error = %e, "could not report an object that does not decode");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_crds::DataStream;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "weir.dev/v1alpha1",
            "kind": "DataStream",
            "metadata": {
                "name": "a",
                "namespace": "team-b",
                "annotations": {LAST_APPLIED: "{}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": spec,
        }))
        .expect("a DynamicObject")
    }

    fn spec(field_type: &str) -> serde_json::Value {
        serde_json::json!({
            "owner": "team-b",
            "description": "d",
            "schema": {"fields": [
                {"name": "id", "type": "string"},
                {"name": "nested", "type": "struct", "fields": [{"name": "u", "type": field_type}]},
            ]},
        })
    }

    #[test]
    fn an_object_decodes_without_what_the_operator_never_reads() {
        let ds: DataStream = decode(object(spec("string"))).expect("decodes");
        assert!(ds.metadata.managed_fields.is_none());
        let annotations = ds.metadata.annotations.unwrap_or_default();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
    }

    #[test]
    fn an_undecodable_object_is_named_by_the_field_that_failed() {
        let failed = decode::<DataStream>(object(spec("uuid"))).expect_err("refused");
        let (obj, why) = *failed;
        assert_eq!(obj.metadata.name.as_deref(), Some("a"));
        assert!(
            why.contains("spec.schema.fields[1].fields[0].type") && why.contains("uuid"),
            "{why}"
        );
    }

    #[test]
    fn health_turns_bad_only_after_failing_longer_than_the_stall_timeout() {
        let health = WatchHealth::new(Duration::from_secs(60));
        let start = Instant::now();
        health.record("datastreams", Ok(()));
        assert_eq!(health.wedged_at(start + Duration::from_secs(600)), None);
        health.record("datastreams", Err("connection refused".into()));
        assert_eq!(health.wedged_at(start + Duration::from_secs(30)), None);
        let why = health
            .wedged_at(start + Duration::from_secs(90))
            .expect("wedged");
        assert!(
            why.contains("datastreams") && why.contains("connection refused"),
            "{why}"
        );
        // Further errors do not restart the clock; one success clears it.
        health.record("datastreams", Err("still refused".into()));
        assert!(health.wedged_at(start + Duration::from_secs(90)).is_some());
        health.record("datastreams", Ok(()));
        assert_eq!(health.wedged_at(start + Duration::from_secs(900)), None);
    }
}
