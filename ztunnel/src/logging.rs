//! Process logging: one `tracing` subscriber with a filter that can be changed at runtime.
//!
//! The filter is an `EnvFilter` (RUST_LOG syntax, default `info`) behind a reload layer, so
//! the admin server's `/logging` endpoint can raise a module to `debug` on a live ztunnel and
//! lower it again without a restart. Output is text or one JSON object per line with event
//! fields as top-level keys (what log pipelines index).
//!
//! The directive-merging logic ([`merge_spec`]) is pure so it can be tested without a
//! subscriber.

use std::io::IsTerminal as _;
use std::sync::{Arc, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::accesslog::LogFormat;

#[cfg(test)]
pub(crate) mod capture;
#[cfg(test)]
mod tests;

/// The filter used when RUST_LOG is unset or invalid.
pub const DEFAULT_FILTER: &str = "info";

type FilterLayer = reload::Layer<EnvFilter, Registry>;
type FmtLayer = Box<dyn Layer<Layered<FilterLayer, Registry>> + Send + Sync>;

/// Handle to change the process's log filter at runtime. Cheap to clone.
#[derive(Clone)]
pub struct LogHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    reload: reload::Handle<EnvFilter, Registry>,
    /// The filter at start-up; `/logging?reset` returns to it.
    default_spec: String,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &self.current())
            .field("default", &self.inner.default_spec)
            .finish()
    }
}

/// One `/logging` level change: `target` (a module path such as `ztunnel::proxy`, or `None`
/// for the global level) set to `level`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelDirective {
    pub target: Option<String>,
    pub level: LevelFilter,
}

/// Parses a level name the way Istio's `/logging` accepts them.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(LevelFilter::TRACE),
        "debug" => Some(LevelFilter::DEBUG),
        "info" => Some(LevelFilter::INFO),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "error" => Some(LevelFilter::ERROR),
        "off" => Some(LevelFilter::OFF),
        _ => None,
    }
}

fn parse_filter(spec: &str) -> Result<EnvFilter, String> {
    if spec.trim().is_empty() {
        return Err("empty log filter".to_string());
    }
    EnvFilter::builder()
        .parse(spec)
        .map_err(|e| format!("invalid log filter {spec:?}: {e}"))
}

impl LogHandle {
    /// Replaces the whole filter with `spec` (RUST_LOG syntax, e.g. `info,ztunnel::proxy=debug`).
    pub fn set_filter(&self, spec: &str) -> Result<(), String> {
        let filter = parse_filter(spec)?;
        self.inner
            .reload
            .reload(filter)
            .map_err(|e| format!("cannot update log filter: {e}"))?;
        tracing::info!(filter = %self.current(), "log filter changed");
        Ok(())
    }

    /// The effective filter, in RUST_LOG syntax.
    pub fn current(&self) -> String {
        self.inner
            .reload
            .with_current(|f| f.to_string())
            .unwrap_or_else(|e| format!("<unavailable: {e}>"))
    }

    /// The filter the process started with.
    pub fn default_filter(&self) -> &str {
        &self.inner.default_spec
    }

    /// Applies level changes on top of the current filter (or the start-up filter if `reset`),
    /// replacing any existing directive for the same target. Istio `/logging` semantics.
    pub fn update(&self, reset: bool, directives: &[LevelDirective]) -> Result<(), String> {
        let base = if reset {
            self.inner.default_spec.clone()
        } else {
            self.current()
        };
        self.set_filter(&merge_spec(&base, directives))
    }
}

/// Splits a filter spec on the commas that separate directives, not those inside a span
/// filter such as `target[span{a=1,b=2}]=debug`.
fn split_directives(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in spec.char_indices() {
        match c {
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&spec[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

/// What a directive applies to: `""` for a bare level (the global default), otherwise the
/// directive without its trailing `=level`.
fn directive_key(d: &str) -> &str {
    if parse_level(d).is_some() {
        return "";
    }
    match d.rsplit_once('=') {
        // Only a `=` outside span/field brackets separates the level.
        Some((key, level)) if parse_level(level).is_some() && !level.contains(['}', ']']) => key,
        _ => d,
    }
}

/// Returns `base` with each of `directives` replacing any directive for the same target.
/// Pure; the result is RUST_LOG syntax (order is irrelevant to `EnvFilter`).
pub fn merge_spec(base: &str, directives: &[LevelDirective]) -> String {
    let mut kept: Vec<String> = split_directives(base)
        .into_iter()
        .map(str::to_string)
        .collect();
    for d in directives {
        let key = d.target.as_deref().unwrap_or("");
        kept.retain(|existing| directive_key(existing) != key);
        kept.push(match &d.target {
            None => d.level.to_string().to_ascii_lowercase(),
            Some(t) => format!("{t}={}", d.level.to_string().to_ascii_lowercase()),
        });
    }
    kept.join(",")
}

/// Builds the subscriber and its handle without installing it, writing to `writer`.
/// `spec` must already be valid (see [`parse_filter`]), which keeps this infallible.
pub(crate) fn build<W>(
    format: LogFormat,
    writer: W,
    filter: EnvFilter,
    ansi: bool,
) -> (impl tracing::Subscriber + Send + Sync + 'static, LogHandle)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let default_spec = filter.to_string();
    let (filter_layer, reload) = reload::Layer::new(filter);
    let fmt_layer: FmtLayer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    let subscriber = Registry::default().with(filter_layer).with(fmt_layer);
    let handle = LogHandle {
        inner: Arc::new(HandleInner {
            reload,
            default_spec,
        }),
    };
    (subscriber, handle)
}

/// The start-up filter: RUST_LOG if set and valid, else [`DEFAULT_FILTER`]; plus the reason
/// RUST_LOG was ignored, to be logged once logging works.
fn startup_filter(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let default = || EnvFilter::new(DEFAULT_FILTER);
    match rust_log.filter(|s| !s.trim().is_empty()) {
        None => (default(), None),
        Some(spec) => match parse_filter(spec) {
            Ok(f) => (f, None),
            Err(e) => (default(), Some(e)),
        },
    }
}

/// Installs the process-wide subscriber, logging to stdout, and returns its handle.
///
/// The filter comes from RUST_LOG, falling back to `info` (with a warning) when it is unset
/// or invalid. Only the first call installs anything; later calls return the same handle and
/// ignore `format`, so libraries and tests can call it without coordinating. If some other
/// subscriber was installed first, ambit's is not, and the handle changes nothing visible.
pub fn init(format: LogFormat) -> LogHandle {
    static GLOBAL: OnceLock<LogHandle> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let rust_log = std::env::var("RUST_LOG").ok();
            let (filter, bad_env) = startup_filter(rust_log.as_deref());
            let ansi = std::io::stdout().is_terminal();
            let (subscriber, handle) = build(format, std::io::stdout, filter, ansi);
            if let Err(e) = subscriber.try_init() {
                eprintln!("ambit: logging not initialised, a subscriber is already set: {e}");
            }
            if let Some(e) = bad_env {
                tracing::warn!(error = %e, "ignoring RUST_LOG, using {DEFAULT_FILTER:?}");
            }
            handle
        })
        .clone()
}
