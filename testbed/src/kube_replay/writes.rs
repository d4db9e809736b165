//! Client writes: `POST` (create), `PUT` (replace), `PATCH` (merge, strategic-merge treated as
//! merge, and server-side apply treated as create-or-merge) and `DELETE`, with the API server's
//! answers for the cases clients must handle: `201 Created`, `409 AlreadyExists` on a create that
//! lost a race, `409 Conflict` on a replace from a stale `resourceVersion`, `404 NotFound`.
//! `POST tokenreviews` is answered from the scripted tokens and stores nothing.
//!
//! Every successful write is a real change: it bumps the cluster resourceVersion and reaches
//! watches exactly like a scripted [`super::KubeReplay::apply`].

use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::query::Target;
use super::{
    status_failure, store, unstore, Resource, Shared, State, TokenIdentity, API_SERVER_AUDIENCE,
};

/// The answer to a write: status and body.
pub(super) type Answer = (StatusCode, Value);

fn fail(status: StatusCode, reason: &str, message: &str) -> Answer {
    (status, status_failure(status.as_u16(), reason, message))
}

/// Answers a non-GET request for `shared.resources[res]`.
pub(super) fn answer(
    shared: &Shared,
    st: &mut State,
    method: &Method,
    res: usize,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Answer {
    let resource = shared.resources[res];
    if resource.plural == "tokenreviews" {
        return match (method, &target.name) {
            (&Method::POST, None) => review(st, body),
            _ => fail(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "tokenreviews only supports create",
            ),
        };
    }
    let namespace = target.namespace.clone().unwrap_or_default();
    if resource.namespaced && namespace.is_empty() {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "{} must be written through a namespaced path",
                resource.plural
            ),
        );
    }
    match (method, &target.name) {
        (&Method::POST, None) => match parse_object(body, &resource, &namespace, None) {
            Ok(mut obj) => {
                generate_name(st, &mut obj);
                create(shared, st, res, obj)
            }
            Err(e) => e,
        },
        (&Method::PUT, Some(name)) => match parse_object(body, &resource, &namespace, Some(name)) {
            Ok(obj) => replace(shared, st, res, &namespace, name, obj),
            Err(e) => e,
        },
        (&Method::PATCH, Some(name)) => {
            patch(shared, st, res, &namespace, name, content_type, body)
        }
        (&Method::DELETE, Some(name)) => match unstore(st, res, &namespace, name, true) {
            Some(obj) => (StatusCode::OK, obj),
            None => not_found(&resource, name),
        },
        _ => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on this path by kube_replay"),
        ),
    }
}

fn not_found(resource: &Resource, name: &str) -> Answer {
    fail(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} {name:?} not found", resource.plural),
    )
}

/// Parses a request body as an object of `resource` and checks it against the path: the API
/// server rejects a body whose kind, namespace or name contradicts the URL.
fn parse_object(
    body: &[u8],
    resource: &Resource,
    namespace: &str,
    name: Option<&str>,
) -> Result<Value, Answer> {
    let bad = |msg: String| fail(StatusCode::BAD_REQUEST, "BadRequest", &msg);
    let mut obj: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let map = obj
        .as_object_mut()
        .ok_or_else(|| bad("body is not an object".into()))?;
    for (field, want) in [
        ("kind", resource.kind.to_owned()),
        ("apiVersion", resource.api_version()),
    ] {
        match map.get(field).and_then(Value::as_str) {
            None => {
                map.insert(field.into(), Value::String(want));
            }
            Some(got) if got == want => {}
            Some(got) => {
                return Err(bad(format!(
                    "{field} {got:?} does not match the path ({want})"
                )))
            }
        }
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| bad("metadata is not an object".into()))?;
    if resource.namespaced {
        match meta.get("namespace").and_then(Value::as_str) {
            None => {
                meta.insert("namespace".into(), Value::String(namespace.to_owned()));
            }
            Some(ns) if ns == namespace => {}
            Some(ns) => {
                return Err(bad(format!(
                    "the namespace of the object ({ns}) does not match the namespace on the request ({namespace})"
                )))
            }
        }
    }
    let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    match name {
        Some(path_name) if !body_name.is_empty() && body_name != path_name => {
            return Err(bad(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({path_name})"
            )))
        }
        Some(path_name) => {
            meta.insert("name".into(), Value::String(path_name.to_owned()));
        }
        None if body_name.is_empty() && meta.get("generateName").is_none() => {
            return Err(fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value: name or generateName is required",
            ))
        }
        None => {}
    }
    Ok(obj)
}

/// Fills `metadata.name` from `generateName` as the API server does.
fn generate_name(st: &State, obj: &mut Value) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if has_name {
        return;
    }
    if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
        let name = format!("{prefix}{:05x}", st.rv + 1);
        meta.insert("name".into(), Value::String(name));
    }
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn create(shared: &Shared, st: &mut State, res: usize, obj: Value) -> Answer {
    let resource = shared.resources[res];
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let name = name_of(&obj);
    if st
        .objects
        .contains_key(&(res, namespace.clone(), name.clone()))
    {
        let mut answer = fail(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} {name:?} already exists", resource.plural),
        );
        answer.1["details"] = json!({ "name": name, "kind": resource.plural });
        return answer;
    }
    stored(shared, st, res, obj, StatusCode::CREATED)
}

fn stored(shared: &Shared, st: &mut State, res: usize, obj: Value, ok: StatusCode) -> Answer {
    match store(st, &shared.resources, res, obj, true) {
        Ok(obj) => (ok, obj),
        Err(e) => fail(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string()),
    }
}

fn replace(
    shared: &Shared,
    st: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    obj: Value,
) -> Answer {
    let resource = shared.resources[res];
    let key = (res, namespace.to_owned(), name.to_owned());
    let Some(current) = st.objects.get(&key) else {
        return not_found(&resource, name);
    };
    let current_rv = current.pointer("/metadata/resourceVersion").cloned();
    if let Some(sent) = obj.pointer("/metadata/resourceVersion") {
        if Some(sent) != current_rv.as_ref() {
            return fail(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                     please apply your changes to the latest version and try again",
                    resource.plural
                ),
            );
        }
    }
    stored(shared, st, res, obj, StatusCode::OK)
}

fn patch(
    shared: &Shared,
    st: &mut State,
    res: usize,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Answer {
    let resource = shared.resources[res];
    let patch: Value = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("patch is not JSON: {e}"),
            )
        }
    };
    let key = (res, namespace.to_owned(), name.to_owned());
    let media = content_type.split(';').next().unwrap_or("").trim();
    let current = st.objects.get(&key).cloned();
    match (media, current) {
        (
            "application/merge-patch+json" | "application/strategic-merge-patch+json",
            Some(mut obj),
        ) => {
            merge(&mut obj, &patch);
            stored(shared, st, res, obj, StatusCode::OK)
        }
        ("application/merge-patch+json" | "application/strategic-merge-patch+json", None) => {
            not_found(&resource, name)
        }
        // Server-side apply, simplified to create-or-merge (no field ownership).
        ("application/apply-patch+yaml", current) => {
            let created = current.is_none();
            let mut obj = current.unwrap_or_else(|| json!({}));
            merge(&mut obj, &patch);
            match parse_object(obj.to_string().as_bytes(), &resource, namespace, Some(name)) {
                Ok(obj) => {
                    let ok = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    stored(shared, st, res, obj, ok)
                }
                Err(e) => e,
            }
        }
        (other, _) => fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("the body of the request was in an unknown format: {other:?}"),
        ),
    }
}

/// JSON merge patch (RFC 7386): objects merge key by key, `null` deletes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A TokenReview answer: the scripted identity when the token is known and minted for one of
/// the requested audiences, else an unauthenticated status with the API server's error text.
fn review(st: &State, body: &[u8]) -> Answer {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return fail(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut wanted: Vec<String> = review
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if wanted.is_empty() {
        wanted.push(API_SERVER_AUDIENCE.to_owned());
    }
    review["status"] = match st.tokens.get(&token) {
        None => json!({ "user": {}, "error": "[invalid bearer token, token lookup failed]" }),
        Some(TokenIdentity { user, audiences }) => {
            let granted: Vec<&String> = wanted.iter().filter(|a| audiences.contains(a)).collect();
            if granted.is_empty() {
                json!({
                    "user": {},
                    "error": format!("[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {wanted:?}]")
                })
            } else {
                json!({ "authenticated": true, "user": user, "audiences": granted })
            }
        }
    };
    if let Some(map) = review.as_object_mut() {
        map.insert("kind".into(), json!("TokenReview"));
        map.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
        map.entry("metadata").or_insert_with(|| json!({}));
    }
    (StatusCode::CREATED, review)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut obj = json!({ "a": "b", "c": { "d": "e", "f": "g" } });
        merge(&mut obj, &json!({ "a": "z", "c": { "f": null } }));
        assert_eq!(obj, json!({ "a": "z", "c": { "d": "e" } }));
        merge(&mut obj, &json!({ "c": ["x"] }));
        assert_eq!(obj, json!({ "a": "z", "c": ["x"] }));
    }
}
