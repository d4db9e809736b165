//! The HTTP side of the replay server: one task per connection, list/get answered from the
//! store, watches answered with a chunked stream fed by [`super::publish`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::query::{parse_path, parse_query, ListWatch, Target};
use super::{
    event_for, line, status_failure, too_old_event, watch_event, Gone, RecordedRequest, Shared,
    State, WatchMsg, WatchReg,
};

type Body = BoxBody<Bytes, std::io::Error>;

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Connections live in this set, so aborting the accept task (dropping the server) also
    // cuts every open connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    // Errors here are clients going away or watches cut on purpose.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(status, &status_failure(status.as_u16(), reason, message))
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // A body cut short is answered as an empty one: the write is then refused as malformed.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or("").to_owned();
    let method = parts.method;
    let target = parse_path(&path);
    let query = parse_query(&raw_query);
    let params = query.as_ref().ok().map(ListWatch::from_query);
    let mut st = shared.lock();
    let plural = target.as_ref().ok().map(|t| t.plural.clone());
    let watch = matches!(params, Some(Ok(ListWatch { watch: true, .. })));
    let write = Write {
        content_type: &content_type,
        body: &body,
    };
    let resp = answer(
        shared,
        &mut st,
        &method,
        target,
        query.clone(),
        params,
        write,
    );
    st.requests.push(RecordedRequest {
        method: method.to_string(),
        path,
        query: query.unwrap_or_default(),
        plural,
        watch,
        status: resp.status().as_u16(),
        body: (method != Method::GET)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten(),
    });
    drop(st);
    shared.poke();
    resp
}

/// The body of a write request.
struct Write<'a> {
    content_type: &'a str,
    body: &'a [u8],
}

fn answer(
    shared: &Shared,
    st: &mut State,
    method: &Method,
    target: Result<Target, super::query::QueryError>,
    query: Result<std::collections::BTreeMap<String, String>, super::query::QueryError>,
    params: Option<Result<ListWatch, super::query::QueryError>>,
    write: Write<'_>,
) -> Response<Body> {
    let bad =
        |e: &dyn std::fmt::Display| failure(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string());
    let target = match target {
        Ok(t) => t,
        Err(e) => return failure(StatusCode::NOT_FOUND, "NotFound", &e.to_string()),
    };
    if let Err(e) = query {
        return bad(&e);
    }
    let params = match params {
        Some(Ok(p)) => p,
        Some(Err(e)) => return bad(&e),
        None => return bad(&"unreadable query"),
    };
    let Some(res) = shared.resources.iter().position(|r| {
        r.plural == target.plural && r.group == target.group && r.version == target.version
    }) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the server could not find the requested resource ({})",
                target.plural
            ),
        );
    };
    let resource = shared.resources[res];
    if let Some(rule) = st
        .failures
        .iter_mut()
        .find(|f| f.plural == resource.plural && f.remaining > 0)
    {
        rule.remaining -= 1;
        let code = StatusCode::from_u16(rule.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return failure(
            code,
            "InternalError",
            "failure scripted by KubeReplay::fail_next",
        );
    }
    st.failures.retain(|f| f.remaining > 0);
    if !resource.namespaced && target.namespace.is_some() {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} is not namespaced", resource.plural),
        );
    }
    if *method != Method::GET {
        let (status, body) = super::writes::answer(
            shared,
            st,
            method,
            res,
            &target,
            write.content_type,
            write.body,
        );
        return full(status, &body);
    }

    if let Some(name) = &target.name {
        let key = (
            res,
            target.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        return match st.objects.get(&key) {
            Some(obj) => full(StatusCode::OK, obj),
            None => failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} {:?} not found", resource.plural, name),
            ),
        };
    }
    let selects = |obj: &Value| {
        let in_ns = target.namespace.as_deref().is_none_or(|ns| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        });
        in_ns && params.fields.matches(obj) && params.labels.matches(obj)
    };
    if params.send_initial_events {
        return bad(&"streaming lists (sendInitialEvents) are not supported by kube_replay");
    }
    if params.watch {
        return start_watch(st, res, &target, &params, &selects);
    }

    // A list, or the next page of one.
    let (list_rv, mut items) = match &params.continue_token {
        Some(token) => match st.pages.remove(token) {
            Some(page) => page,
            None => return failure(
                StatusCode::GONE,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result.",
            ),
        },
        None => {
            let items = st
                .objects
                .iter()
                .filter(|((r, _, _), obj)| *r == res && selects(obj))
                // List items carry no kind/apiVersion: the list's own say what they are.
                .map(|(_, obj)| {
                    let mut o = obj.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            (st.rv, items)
        }
    };
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(limit) = params.limit.filter(|&l| l < items.len()) {
        let rest = items.split_off(limit);
        st.next_page += 1;
        let token = format!("page-{}", st.next_page);
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(rest.len());
        st.pages.insert(token, (list_rv, rest));
    }
    full(
        StatusCode::OK,
        &json!({
            "kind": resource.list_kind(),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn start_watch(
    st: &mut State,
    res: usize,
    target: &Target,
    params: &ListWatch,
    selects: &dyn Fn(&Value) -> bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    let reg = WatchReg {
        resource: res,
        namespace: target.namespace.clone(),
        fields: params.fields.clone(),
        labels: params.labels.clone(),
        bookmarks: params.allow_bookmarks,
        tx,
    };
    match params.resource_version.as_str() {
        // "Start at most recent": the current state as synthetic ADDED events, then changes.
        "" | "0" => {
            for ((r, _, _), obj) in &st.objects {
                if *r == res && selects(obj) {
                    let _ = reg
                        .tx
                        .send(WatchMsg::Line(line(&watch_event("ADDED", obj))));
                }
            }
        }
        rv => {
            let Ok(from) = rv.parse::<u64>() else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("resourceVersion {rv:?} is not a number"),
                );
            };
            if from < st.floor {
                return match st.gone {
                    Gone::HttpStatus => failure(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {from} ({})", st.floor),
                    ),
                    Gone::ErrorEvent => {
                        let _ = reg.tx.send(WatchMsg::Line(line(&too_old_event(st.floor))));
                        let _ = reg.tx.send(WatchMsg::End);
                        stream_response(rx, None)
                    }
                };
            }
            for change in st.history.iter().filter(|c| c.rv > from) {
                if let Some(ev) = event_for(&reg, change) {
                    let _ = reg.tx.send(WatchMsg::Line(line(&ev)));
                }
            }
        }
    }
    let timeout = params.timeout_seconds.map(Duration::from_secs);
    st.watches.push(reg);
    stream_response(rx, timeout)
}

/// A chunked watch response fed by `rx`, ended by `WatchMsg::End`, cut by `WatchMsg::Cut`
/// (an error from the body makes hyper close the connection without the final chunk), and
/// ended cleanly when `timeout` (the request's `timeoutSeconds`) runs out.
fn stream_response(
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let frames = futures::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        let msg = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        match msg {
            Some(WatchMsg::Line(b)) => Some((Ok(Frame::data(b)), Some(rx))),
            Some(WatchMsg::Cut) => Some((
                Err(std::io::Error::other("kube_replay: watch connection cut")),
                None,
            )),
            Some(WatchMsg::End) | None => None,
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
