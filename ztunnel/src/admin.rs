//! Admin server (port 15000): `/config_dump`, `/logging`, and an index at `/`.
//!
//! The admin port can change log levels and dumps the full config (identities, policies), and
//! it has no authentication, so it only ever binds loopback: [`serve_admin`] refuses any other
//! address rather than trusting the caller (see [`check_admin_addr`]).
//!
//! `/logging` follows Istio ztunnel / Envoy:
//! - `GET /logging` or `POST /logging` without a query: show the current filter;
//! - `POST /logging?level=debug`: set the global level;
//! - `POST /logging?level=ztunnel::proxy:debug,access:off`: set per-target levels (Istio);
//! - `POST /logging?ztunnel::proxy=debug`: set one target's level (Envoy);
//! - `reset` (e.g. `?reset&level=debug`): start again from the start-up filter.
//!
//! Changes need POST: a GET that mutates could be triggered by anything that merely fetches a
//! URL on the node (link previews, prefetch).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::httpserver::{self, text, with_type, Body};
use crate::logging::{parse_level, LevelDirective, LogHandle};

#[cfg(test)]
mod tests;

/// What the admin server serves. Clone is cheap (`Arc`s inside).
#[derive(Clone)]
pub struct AdminState {
    /// Produces the current config as JSON on each `/config_dump` request.
    pub config_dump: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Runtime log control; `None` disables `/logging` (e.g. logging not initialised by ambit).
    pub log: Option<LogHandle>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// Why the admin server did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin server must listen on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot read the admin listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Accepts only loopback addresses (127.0.0.0/8, ::1, and IPv4-mapped loopback).
pub fn check_admin_addr(addr: SocketAddr) -> Result<(), String> {
    let ip = addr.ip();
    let loopback = match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback {
        Ok(())
    } else {
        Err(AdminError::NotLoopback(addr).to_string())
    }
}

/// Serves the admin endpoints until `shutdown` resolves. Returns an error at once, serving
/// nothing, if `listener` is not bound to a loopback address.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future,
) -> Result<(), AdminError> {
    let addr = listener.local_addr().map_err(AdminError::LocalAddr)?;
    if check_admin_addr(addr).is_err() {
        return Err(AdminError::NotLoopback(addr));
    }
    let state = Arc::new(state);
    let handler = move |req: Request<Incoming>| {
        let resp = handle(&state, &req);
        async move { resp }
    };
    httpserver::serve("admin", listener, handler, shutdown).await;
    Ok(())
}

const INDEX: &str = "ambit ztunnel admin\n\
\n\
  /              this page\n\
  /config_dump   dump the current configuration (JSON)\n\
  /logging       show (GET) or change (POST) log levels\n";

const LOGGING_HELP: &str = "usage:\n\
  GET|POST /logging                                 show the current filter\n\
  POST /logging?level=<level>                       set the global level\n\
  POST /logging?level=<target>:<level>[,...]        set levels per target\n\
  POST /logging?<target>=<level>                    set one target's level\n\
  add `reset` to start from the start-up filter, e.g. ?reset&level=info\n\
levels: trace|debug|info|warn|error|off; targets: module paths such as ztunnel::proxy, or access\n";

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Body> {
    let method = req.method();
    match req.uri().path() {
        "/" if is_read(method) => text(StatusCode::OK, INDEX),
        "/config_dump" if is_read(method) => config_dump(state),
        "/logging" => logging(state, method, req.uri().query()),
        "/" | "/config_dump" => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => text(StatusCode::NOT_FOUND, format!("not found\n\n{INDEX}")),
    }
}

fn is_read(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

fn config_dump(state: &AdminState) -> Response<Body> {
    let dump = (state.config_dump)();
    match serde_json::to_string_pretty(&dump) {
        Ok(body) => with_type(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise config dump: {e}\n"),
        ),
    }
}

fn logging(state: &AdminState, method: &Method, query: Option<&str>) -> Response<Body> {
    let Some(log) = &state.log else {
        return text(
            StatusCode::NOT_FOUND,
            "log level control is not available in this process\n",
        );
    };
    let request = match parse_logging_query(query) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n\n{LOGGING_HELP}")),
    };
    let current = |log: &LogHandle| {
        text(
            StatusCode::OK,
            format!("current log level is {}\n", log.current()),
        )
    };
    match (request, method) {
        (LoggingRequest::Show, m) if is_read(m) || m == Method::POST => current(log),
        (LoggingRequest::Update { .. }, m) if is_read(m) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("changing log levels needs POST\n\n{LOGGING_HELP}"),
        ),
        (LoggingRequest::Update { reset, directives }, m) if m == Method::POST => {
            match log.update(reset, &directives) {
                Ok(()) => current(log),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n\n{LOGGING_HELP}")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use GET or POST\n\n{LOGGING_HELP}"),
        ),
    }
}

/// A parsed `/logging` query.
#[derive(Debug, PartialEq, Eq)]
enum LoggingRequest {
    Show,
    Update {
        reset: bool,
        directives: Vec<LevelDirective>,
    },
}

/// What is wrong with a `/logging` query.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum LoggingQueryError {
    #[error("invalid percent-encoding in query parameter {0:?}")]
    Encoding(String),
    #[error("invalid log level {level:?} for {target}")]
    Level { target: String, level: String },
    #[error("invalid log target {0:?}: expected a module path such as ztunnel::proxy")]
    Target(String),
}

/// Parses the query of `/logging` (Istio's `level=` forms and Envoy's `<target>=<level>`).
fn parse_logging_query(query: Option<&str>) -> Result<LoggingRequest, LoggingQueryError> {
    let mut reset = false;
    let mut directives = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        let value = percent_decode(v)?;
        match key.as_str() {
            "reset" => reset = true,
            "level" => {
                for item in value.split(',') {
                    // `ztunnel::proxy:debug`: the level follows the *last* colon, since module
                    // paths contain `::` themselves.
                    let (target, level) = match item.rsplit_once(':') {
                        Some((t, l)) => (Some(t), l),
                        None => (None, item),
                    };
                    directives.push(directive(target, level)?);
                }
            }
            target => directives.push(directive(Some(target), &value)?),
        }
    }
    if !reset && directives.is_empty() {
        return Ok(LoggingRequest::Show);
    }
    Ok(LoggingRequest::Update { reset, directives })
}

fn directive(target: Option<&str>, level: &str) -> Result<LevelDirective, LoggingQueryError> {
    if let Some(t) = target {
        if !valid_target(t) {
            return Err(LoggingQueryError::Target(t.to_string()));
        }
    }
    let level = parse_level(level).ok_or_else(|| LoggingQueryError::Level {
        target: target.unwrap_or("the global level").to_string(),
        level: level.to_string(),
    })?;
    Ok(LevelDirective {
        target: target.map(str::to_string),
        level,
    })
}

/// Module-path-like names only: anything else could smuggle extra directives (`,`, `=`) or
/// span filters (`[`) into the filter spec.
fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && !t.starts_with(':')
        && !t.ends_with(':')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Decodes `%XX` escapes and `+` (form encoding's space). Rejects bad escapes and non-UTF-8.
fn percent_decode(s: &str) -> Result<String, LoggingQueryError> {
    let bad = || LoggingQueryError::Encoding(s.to_string());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                // from_str_radix alone would accept a sign (`%+1`).
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad());
                }
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}
