//! Kubernetes Events for config problems (`--kube`): one core/v1 Event (type `Warning`, reason
//! `InvalidConfig` or `ConfigWarning`) regarding the object, per problem that appears, so
//! `kubectl describe` and `kubectl get events` show why a policy is not (fully) in force.
//!
//! Invariants:
//! - A problem is posted when it appears in the [`ProblemSet`], not on every retranslation; and
//!   never twice for the same object version and message (dedupe key: uid, resourceVersion,
//!   field and message), so a set that flaps back to a problem already reported stays quiet.
//! - Posting is best effort: a failed GET or POST is logged and skipped; it never stops the
//!   control plane or delays translation (this runs in its own task).
//! - The uid and resourceVersion come from a GET of the object when the problem appears: a
//!   problem is about what the API server holds, and the watch stores keep only the parsed
//!   form (which for an unparsable object has no uid at all).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use tracing::{debug, warn};

use super::kube_source::{WatchedKind, WATCHED_KINDS};
use crate::problems::{diff, ProblemSet};
use crate::translate::{Problem, Severity};

/// `source.component` and `reportingComponent` of every Event (core/v1's name for
/// events.k8s.io's `reportingController`).
pub const REPORTING_CONTROLLER: &str = "ambit-control-plane";
/// Reason of an Event for a skipped object (or part).
pub const REASON_INVALID: &str = "InvalidConfig";
/// Reason of an Event for an object applied with a change.
pub const REASON_WARNING: &str = "ConfigWarning";
/// The API server accepts longer messages, but events.k8s.io caps them at 1 KiB and `kubectl`
/// shows them on one line.
const MAX_MESSAGE: usize = 1024;

/// The object an Event is about, as the API server has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Involved {
    pub api_version: String,
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
}

/// Identity of a posted Event: the same problem on the same object version is posted once.
type DedupeKey = (String, String, String, String);

fn dedupe_key(p: &Problem, o: &Involved) -> DedupeKey {
    (
        o.uid.clone(),
        o.resource_version.clone(),
        p.field.clone(),
        p.message.clone(),
    )
}

/// The Event reporting `p` about `o`. Legacy-style (first/last timestamp, no `eventTime`) so
/// the API server's core/v1 validation does not require a series; the Event lives in the
/// object's namespace, or `default` for cluster-scoped objects, as the API server requires.
pub fn event_for(p: &Problem, o: &Involved, instance: &str, now: Time) -> Event {
    let namespace = if o.namespace.is_empty() {
        "default".to_string()
    } else {
        o.namespace.clone()
    };
    let mut message = if p.field.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.field, p.message)
    };
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    // client-go's naming: `<object>.<unique hex>`; the object part is cut so the whole name
    // stays within the 253 characters of a DNS subdomain.
    let stamp = now.0.as_nanosecond();
    let prefix: String = o.name.chars().take(200).collect();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}.{stamp:x}")),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(o.api_version.clone()),
            kind: Some(o.kind.clone()),
            namespace: (!o.namespace.is_empty()).then(|| o.namespace.clone()),
            name: Some(o.name.clone()),
            uid: Some(o.uid.clone()),
            resource_version: Some(o.resource_version.clone()),
            field_path: None,
        },
        reason: Some(
            match p.severity {
                Severity::Error => REASON_INVALID,
                Severity::Warning => REASON_WARNING,
            }
            .to_string(),
        ),
        message: Some(message),
        type_: Some("Warning".to_string()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some(REPORTING_CONTROLLER.to_string()),
            host: None,
        }),
        reporting_component: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance.to_string()),
        ..Event::default()
    }
}

/// Posts Events for problems as they appear in `problems`, until the set is dropped or the
/// task aborted. `instance` names this replica (`reportingInstance`: its pod name).
pub async fn post_events(client: kube::Client, problems: ProblemSet, instance: String) {
    let mut rx = problems.subscribe();
    // Problems already present when this starts are new to the cluster's event log too.
    let mut known: Arc<BTreeSet<Problem>> = Arc::default();
    let mut posted: BTreeMap<DedupeKey, Problem> = BTreeMap::new();
    loop {
        let current = rx.borrow_and_update().clone();
        for p in diff(&known, &current).added {
            post_one(&client, &p, &instance, &mut posted).await;
        }
        // Forget keys of problems that are gone: memory stays bounded by the current set.
        posted.retain(|_, p| current.contains(p));
        known = current;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn post_one(
    client: &kube::Client,
    p: &Problem,
    instance: &str,
    posted: &mut BTreeMap<DedupeKey, Problem>,
) {
    let Some(kind) = WATCHED_KINDS.iter().find(|k| k.kind == p.object.kind) else {
        // Not an object the API server holds (cannot happen with the watched kinds).
        debug!(problem = %p, "no Kubernetes object to attach an Event to");
        return;
    };
    if p.object.name.is_empty() {
        return;
    }
    let involved = match fetch(client, kind, &p.object.namespace, &p.object.name).await {
        Ok(Some(o)) => o,
        // Deleted meanwhile: the problem goes with it.
        Ok(None) => return,
        Err(e) => {
            warn!(object = %p.object, error = %e,
                "reading the object to post an Event failed; not posting");
            return;
        }
    };
    let key = dedupe_key(p, &involved);
    if posted.contains_key(&key) {
        return;
    }
    let event = event_for(
        p,
        &involved,
        instance,
        Time(k8s_openapi::jiff::Timestamp::now()),
    );
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    let api = Api::<Event>::namespaced(client.clone(), &namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => {
            posted.insert(key, p.clone());
        }
        Err(e) => warn!(object = %p.object, error = %e,
            "posting the Kubernetes Event for a config problem failed"),
    }
}

/// The object's current uid and resourceVersion; `None` when it no longer exists.
async fn fetch(
    client: &kube::Client,
    kind: &WatchedKind,
    namespace: &str,
    name: &str,
) -> Result<Option<Involved>, kube::Error> {
    let resource = kind.api_resource();
    let api: Api<DynamicObject> = if namespace.is_empty() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    };
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(None);
    };
    Ok(Some(Involved {
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: obj.metadata.uid.unwrap_or_default(),
        resource_version: obj.metadata.resource_version.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectRef;

    fn problem(field: &str) -> Problem {
        Problem {
            severity: Severity::Error,
            object: ObjectRef {
                kind: "AuthorizationPolicy".into(),
                namespace: "shop".into(),
                name: "bad".into(),
            },
            field: field.into(),
            message: "unknown action".into(),
        }
    }

    fn involved(namespace: &str) -> Involved {
        Involved {
            api_version: "security.istio.io/v1".into(),
            kind: "AuthorizationPolicy".into(),
            namespace: namespace.into(),
            name: "bad".into(),
            uid: "u-1".into(),
            resource_version: "42".into(),
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn event_names_the_object_field_and_reason() {
        let e = event_for(&problem("spec.action"), &involved("shop"), "cp-0", now());
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("bad."));
        let o = &e.involved_object;
        assert_eq!(o.kind.as_deref(), Some("AuthorizationPolicy"));
        assert_eq!(o.uid.as_deref(), Some("u-1"));
        assert_eq!(o.resource_version.as_deref(), Some("42"));
        assert_eq!(e.reason.as_deref(), Some(REASON_INVALID));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.message.as_deref(), Some("spec.action: unknown action"));
        assert_eq!(e.reporting_component.as_deref(), Some(REPORTING_CONTROLLER));
        assert_eq!(e.reporting_instance.as_deref(), Some("cp-0"));
    }

    #[test]
    fn cluster_scoped_objects_get_events_in_default() {
        let mut o = involved("");
        o.kind = "Namespace".into();
        let e = event_for(&problem(""), &o, "cp-0", now());
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(e.involved_object.namespace, None);
        assert_eq!(e.message.as_deref(), Some("unknown action"));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let mut p = problem("");
        p.message = "é".repeat(MAX_MESSAGE);
        let e = event_for(&p, &involved("shop"), "cp-0", now());
        let m = e.message.unwrap();
        assert!(m.len() <= MAX_MESSAGE && m.ends_with("..."), "{}", m.len());
    }

    #[test]
    fn a_new_object_version_or_message_is_a_new_event() {
        let (p, o) = (problem("spec.action"), involved("shop"));
        let mut newer = o.clone();
        newer.resource_version = "43".into();
        assert_ne!(dedupe_key(&p, &o), dedupe_key(&p, &newer));
        assert_ne!(dedupe_key(&p, &o), dedupe_key(&problem("spec.rules"), &o));
        assert_eq!(dedupe_key(&p, &o), dedupe_key(&p.clone(), &o.clone()));
    }
}
