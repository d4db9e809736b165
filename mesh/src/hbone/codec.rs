//! The HBONE CONNECT request as typed values, and its header formats.
//!
//! Pure by design: `http` types in, typed values out; no tokio, no I/O. Everything here reads
//! bytes a peer chose, so no function panics on any input, and each parser is reachable from a
//! plain string (see [`fuzz_connect`]) for fuzzing.
//!
//! Leniency policy: only the `:method` and `:authority` decide whether a CONNECT is answerable
//! (400 otherwise). `baggage`, `forwarded` and `traceparent` are telemetry and hints; a malformed
//! one is dropped (reads as absent) rather than failing a connection that policy would allow.
//! The strict per-header parsers are public for callers that want the error.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};

/// `baggage` header: W3C baggage with OpenTelemetry k8s keys describing a workload.
pub const BAGGAGE_HEADER: &str = "baggage";
/// `forwarded` header (RFC 7239): the original client address and service host.
pub const FORWARDED_HEADER: &str = "forwarded";
/// `traceparent` header (W3C trace context).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The parts of an HBONE CONNECT request that ambit acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// `:authority`: the target `ip:port` (pod IP + target port, or VIP:port via a waypoint).
    pub authority: SocketAddr,
    /// Who is calling (source workload metadata), if the peer said.
    pub baggage: Option<Baggage>,
    /// Original client address and service host, if the peer said.
    pub forwarded: Option<Forwarded>,
    /// Trace context; Istio sends a random one per connection.
    pub traceparent: Option<TraceParent>,
}

impl ConnectRequest {
    /// A request carrying only the target, as the minimal valid CONNECT.
    pub fn new(authority: SocketAddr) -> Self {
        ConnectRequest {
            authority,
            baggage: None,
            forwarded: None,
            traceparent: None,
        }
    }
}

/// Why a CONNECT request cannot be served. Each variant maps to the status to answer with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("CONNECT request has no :authority")]
    MissingAuthority,
    #[error("CONNECT :authority {0:?} is not an ip:port")]
    BadAuthority(String),
}

impl ConnectError {
    /// The HTTP status the server answers this request with.
    pub fn status(&self) -> StatusCode {
        match self {
            ConnectError::NotConnect(_)
            | ConnectError::MissingAuthority
            | ConnectError::BadAuthority(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads an HBONE CONNECT request. Fails (with a 400) only on a wrong method or an authority
/// that is not a literal `ip:port`; optional headers that do not parse read as absent.
pub fn parse_connect_request<B>(req: &Request<B>) -> Result<ConnectRequest, ConnectError> {
    if req.method() != Method::CONNECT {
        return Err(ConnectError::NotConnect(req.method().as_str().to_string()));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or(ConnectError::MissingAuthority)?;
    let authority = parse_authority(authority.as_str())?;
    let headers = req.headers();
    Ok(ConnectRequest {
        authority,
        baggage: baggage_from_headers(headers),
        forwarded: header_str(headers, FORWARDED_HEADER).and_then(|v| Forwarded::parse(v).ok()),
        traceparent: header_str(headers, TRACEPARENT_HEADER)
            .and_then(|v| TraceParent::parse(v).ok()),
    })
}

/// Parses a CONNECT authority, which must be a literal `ip:port` (`[v6]:port` for IPv6).
/// Host names are refused: the peer must name the exact address it wants, since authorization
/// and the "authority is this workload" check are done on that address.
pub fn parse_authority(s: &str) -> Result<SocketAddr, ConnectError> {
    s.parse::<SocketAddr>()
        .map_err(|_| ConnectError::BadAuthority(truncate_for_error(s)))
}

/// Parses one `baggage` header value (never fails; see [`Baggage::parse`]).
pub fn parse_baggage(value: &str) -> Baggage {
    Baggage::parse(value)
}

/// Parses a `forwarded` header value (see [`Forwarded::parse`]).
pub fn parse_forwarded(value: &str) -> Result<Forwarded, ForwardedError> {
    Forwarded::parse(value)
}

/// Parses a `traceparent` header value (see [`TraceParent::parse`]).
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceParentError> {
    TraceParent::parse(value)
}

/// The baggage of a header map: every `baggage` value, in order (a peer may split it across
/// several header lines). `None` when absent or when no known key carries a value.
pub fn baggage_from_headers(headers: &HeaderMap) -> Option<Baggage> {
    let values = headers
        .get_all(BAGGAGE_HEADER)
        .iter()
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok());
    let b = Baggage::parse_all(values);
    (!b.is_empty()).then_some(b)
}

/// Builds the CONNECT request a client sends for `r`. Optional headers whose value cannot be
/// carried in HTTP (control characters in a host name, say) are left out rather than failing:
/// they are informational, and a request without them is still a valid HBONE request.
pub fn build_connect_request(r: &ConnectRequest) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    // A SocketAddr always formats as a valid authority (`1.2.3.4:80`, `[::1]:80`); should that
    // ever not hold, the default URI makes h2 refuse the request instead of us panicking here.
    if let Ok(uri) = http::Uri::try_from(r.authority.to_string()) {
        *req.uri_mut() = uri;
    }
    let headers = req.headers_mut();
    if let Some(b) = r.baggage.as_ref().filter(|b| !b.is_empty()) {
        insert_header(headers, BAGGAGE_HEADER, &b.to_string());
    }
    if let Some(f) = r.forwarded.as_ref().filter(|f| !f.is_empty()) {
        insert_header(headers, FORWARDED_HEADER, &f.to_string());
    }
    if let Some(t) = &r.traceparent {
        insert_header(headers, TRACEPARENT_HEADER, &t.to_string());
    }
    req
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
        headers.insert(name, v);
    }
}

/// The first value of a header as text. Non-ASCII bytes are allowed if they are UTF-8, since
/// HTTP permits opaque bytes and host names may be internationalised.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// Error messages quote peer input; cap it so one bad request cannot produce megabyte logs.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 128;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// baggage

/// Workload metadata carried in the `baggage` header, with OpenTelemetry's k8s keys:
/// `k8s.cluster.name`, `k8s.namespace.name`, `k8s.<type>.name`, `service.name`,
/// `service.version`. Unknown keys are ignored; empty values read as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Baggage {
    pub cluster_id: Option<String>,
    pub namespace: Option<String>,
    /// The `<type>` of `k8s.<type>.name` (`deployment`, `pod`, `job`, ...).
    pub workload_type: Option<String>,
    pub workload_name: Option<String>,
    pub service_name: Option<String>,
    pub service_version: Option<String>,
}

/// The workload type written when a name is known but its type is not; ztunnel does the same.
pub const DEFAULT_WORKLOAD_TYPE: &str = "deployment";

impl Baggage {
    /// Parses one `baggage` header value. Never fails: unknown or malformed members are skipped.
    pub fn parse(value: &str) -> Self {
        Self::parse_all(std::iter::once(value))
    }

    /// Parses several `baggage` values as one list; a later member overrides an earlier one.
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut b = Baggage::default();
        for member in values.into_iter().flat_map(|v| v.split(',')) {
            // W3C: member = key OWS "=" OWS value *( OWS ";" property ); properties ignored.
            let member = member.split(';').next().unwrap_or("");
            let Some((key, value)) = member.split_once('=') else {
                continue;
            };
            let key = key.trim();
            let value = percent_decode(value.trim());
            let value = (!value.is_empty()).then_some(value);
            match key {
                "k8s.cluster.name" => b.cluster_id = value,
                "k8s.namespace.name" => b.namespace = value,
                "service.name" => b.service_name = value,
                "service.version" => b.service_version = value,
                _ => {
                    if let Some(kind) = workload_type_of_key(key) {
                        b.workload_type = value.as_ref().map(|_| kind.to_string());
                        b.workload_name = value;
                    }
                }
            }
        }
        b
    }

    /// True when no key has a value: such baggage is not worth a header.
    pub fn is_empty(&self) -> bool {
        self.cluster_id.is_none()
            && self.namespace.is_none()
            && self.workload_name.is_none()
            && self.service_name.is_none()
            && self.service_version.is_none()
    }
}

/// `k8s.<type>.name` → `<type>`, for a single non-empty type label other than the two keys
/// that share the shape but mean something else.
fn workload_type_of_key(key: &str) -> Option<&str> {
    let kind = key.strip_prefix("k8s.")?.strip_suffix(".name")?;
    let plausible = !kind.is_empty()
        && kind != "cluster"
        && kind != "namespace"
        && kind
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    plausible.then_some(kind)
}

impl fmt::Display for Baggage {
    /// Only keys with a non-empty value are written, in ztunnel's order; values are
    /// percent-encoded so that `,`, `;`, `=` or non-ASCII cannot break the list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self
            .workload_type
            .as_deref()
            .filter(|k| workload_type_of_key(&format!("k8s.{k}.name")).is_some())
            .unwrap_or(DEFAULT_WORKLOAD_TYPE);
        let workload_key = format!("k8s.{kind}.name");
        let members = [
            ("k8s.cluster.name", &self.cluster_id),
            ("k8s.namespace.name", &self.namespace),
            (workload_key.as_str(), &self.workload_name),
            ("service.name", &self.service_name),
            ("service.version", &self.service_version),
        ];
        let mut first = true;
        for (key, value) in members {
            let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            if !first {
                f.write_char(',')?;
            }
            first = false;
            write!(f, "{key}=")?;
            percent_encode(f, value)?;
        }
        Ok(())
    }
}

/// W3C baggage-octet: printable ASCII except space, `"`, `,`, `;`, `\`; we also encode `%` and
/// `=` so decoding is unambiguous.
fn is_baggage_octet(c: u8) -> bool {
    matches!(c, 0x21..=0x7e) && !matches!(c, b'"' | b',' | b';' | b'\\' | b'%' | b'=')
}

fn percent_encode(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    for &c in s.as_bytes() {
        if is_baggage_octet(c) {
            f.write_char(char::from(c))?;
        } else {
            write!(f, "%{c:02X}")?;
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes. Invalid escapes stay literal, and a result that is not UTF-8 falls
/// back to the raw text: a peer's odd encoding costs it fidelity, never the connection.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) => hex_val(h).zip(hex_val(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// forwarded

/// The parts of an RFC 7239 `forwarded` header HBONE uses: `for="<ip:port>";host=<hostname>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Forwarded {
    /// The original client. `None` when absent or not an `ip:port` (RFC 7239 also allows
    /// `unknown`, obfuscated `_names` and bare IPs, which carry nothing we can act on).
    pub for_addr: Option<SocketAddr>,
    /// The service host name the client asked for.
    pub host: Option<String>,
}

/// Why a `forwarded` header does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("forwarded pair {0:?} has no '='")]
    MissingEquals(String),
    #[error("forwarded parameter name {0:?} is not a token")]
    BadName(String),
    #[error("forwarded value has an unterminated quoted string")]
    UnterminatedQuote,
    #[error("forwarded value {0:?} is neither a token nor a quoted string")]
    BadValue(String),
}

impl Forwarded {
    /// Parses a `forwarded` header. Of several comma-separated elements (one per proxy hop) the
    /// first, the original client's, is returned; the rest are still checked for syntax.
    pub fn parse(value: &str) -> Result<Self, ForwardedError> {
        let mut elements = split_unquoted(value, b',');
        let first = elements.next().unwrap_or("");
        let result = Self::parse_element(first)?;
        for e in elements {
            Self::parse_element(e)?;
        }
        Ok(result)
    }

    fn parse_element(element: &str) -> Result<Self, ForwardedError> {
        let mut fwd = Forwarded::default();
        for pair in split_unquoted(element, b';') {
            let pair = pair.trim_matches(|c| c == ' ' || c == '\t');
            if pair.is_empty() {
                continue; // RFC 7239 allows empty pairs: `for=a;;host=b`.
            }
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| ForwardedError::MissingEquals(truncate_for_error(pair)))?;
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(ForwardedError::BadName(truncate_for_error(name)));
            }
            let value = parse_token_or_quoted(value)?;
            if name.eq_ignore_ascii_case("for") {
                fwd.for_addr = value.parse::<SocketAddr>().ok();
            } else if name.eq_ignore_ascii_case("host") {
                fwd.host = (!value.is_empty()).then_some(value);
            }
        }
        Ok(fwd)
    }

    /// True when neither field is set: such a header is not worth sending.
    pub fn is_empty(&self) -> bool {
        self.for_addr.is_none() && self.host.is_none()
    }
}

impl fmt::Display for Forwarded {
    /// `for` is always quoted (`:` and `[` are not token characters); `host` is quoted only
    /// when it needs to be, as Istio writes it bare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(addr) = &self.for_addr {
            write!(f, "for=\"{addr}\"")?;
            sep = ";";
        }
        if let Some(host) = self.host.as_deref().filter(|h| !h.is_empty()) {
            f.write_str(sep)?;
            f.write_str("host=")?;
            if host.bytes().all(is_tchar) {
                f.write_str(host)?;
            } else {
                f.write_char('"')?;
                for c in host.chars() {
                    if c == '"' || c == '\\' {
                        f.write_char('\\')?;
                    }
                    f.write_char(c)?;
                }
                f.write_char('"')?;
            }
        }
        Ok(())
    }
}

/// RFC 7230 tchar.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Splits on `sep` outside double quotes (honouring `\` escapes inside them). An unterminated
/// quote runs to the end, where the value parser reports it.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut pos = 0;
    let mut in_quotes = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while pos < bytes.len() {
            let c = bytes[pos];
            if in_quotes && c == b'\\' {
                pos += 2;
                continue;
            }
            if c == b'"' {
                in_quotes = !in_quotes;
            } else if c == sep && !in_quotes {
                // `sep` is ASCII, so both slice ends fall on char boundaries.
                let part = &s[start..pos];
                pos += 1;
                start = pos;
                return Some(part);
            }
            pos += 1;
        }
        done = true;
        Some(s.get(start..).unwrap_or(""))
    })
}

fn parse_token_or_quoted(v: &str) -> Result<String, ForwardedError> {
    let Some(inner) = v.strip_prefix('"') else {
        if v.bytes().all(is_tchar) {
            return Ok(v.to_string());
        }
        return Err(ForwardedError::BadValue(truncate_for_error(v)));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or(ForwardedError::UnterminatedQuote)?),
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(ForwardedError::BadValue(truncate_for_error(v)))
                };
            }
            c => out.push(c),
        }
    }
    Err(ForwardedError::UnterminatedQuote)
}

// ---------------------------------------------------------------------------------------------
// traceparent

/// W3C trace context `traceparent`: `<version>-<trace-id>-<parent-id>-<flags>`, lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a `traceparent` does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("traceparent has the wrong length or layout")]
    BadLayout,
    #[error("traceparent field {0} is not lowercase hex")]
    NotHex(&'static str),
    #[error("traceparent version ff is forbidden")]
    ForbiddenVersion,
    #[error("traceparent {0} is all zeros")]
    ZeroId(&'static str),
}

impl TraceParent {
    /// A fresh random trace, unsampled (`-00`), as Istio sends one per HBONE connection.
    pub fn random() -> Self {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let mut t = TraceParent {
            trace_id: rng.gen(),
            parent_id: rng.gen(),
            flags: 0,
        };
        // All-zero ids are invalid; the odds are nil, but a constant fix keeps output valid.
        if t.trace_id == [0; 16] {
            t.trace_id[15] = 1;
        }
        if t.parent_id == [0; 8] {
            t.parent_id[7] = 1;
        }
        t
    }

    /// Parses a `traceparent`. Version 00 must be exactly 55 characters; a later version may
    /// append `-`-prefixed fields, which are ignored, as the W3C spec asks.
    pub fn parse(s: &str) -> Result<Self, TraceParentError> {
        let b = s.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(TraceParentError::BadLayout);
        }
        let version: [u8; 1] = decode_hex(&b[0..2]).ok_or(TraceParentError::NotHex("version"))?;
        match version[0] {
            0xff => return Err(TraceParentError::ForbiddenVersion),
            0x00 if b.len() != 55 => return Err(TraceParentError::BadLayout),
            _ if b.len() > 55 && b[55] != b'-' => return Err(TraceParentError::BadLayout),
            _ => {}
        }
        let trace_id = decode_hex(&b[3..35]).ok_or(TraceParentError::NotHex("trace-id"))?;
        let parent_id = decode_hex(&b[36..52]).ok_or(TraceParentError::NotHex("parent-id"))?;
        let flags: [u8; 1] = decode_hex(&b[53..55]).ok_or(TraceParentError::NotHex("flags"))?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroId("trace-id"));
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroId("parent-id"));
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }
}

/// Decodes exactly `2 * N` lowercase hex digits (the spec forbids uppercase).
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let lower = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = lower(pair[0])? << 4 | lower(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_char('-')?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl std::str::FromStr for TraceParent {
    type Err = TraceParentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// fuzzing

/// Fuzz entry point: splits `bytes` on `\n` into method, authority, baggage, forwarded and
/// traceparent, builds whatever request `http` accepts from them, and runs every parser.
/// Succeeds silently; the only failure a fuzzer should find is a panic.
pub fn fuzz_connect(bytes: &[u8]) {
    let mut fields = bytes.split(|&b| b == b'\n');
    let method = fields.next().unwrap_or_default();
    let authority = fields.next().unwrap_or_default();
    let baggage = fields.next().unwrap_or_default();
    let forwarded = fields.next().unwrap_or_default();
    let traceparent = fields.next().unwrap_or_default();

    for field in [authority, baggage, forwarded, traceparent] {
        let text = String::from_utf8_lossy(field);
        let _ = parse_authority(&text);
        let _ = Baggage::parse(&text).to_string();
        let _ = Forwarded::parse(&text).map(|f| f.to_string());
        let _ = TraceParent::parse(&text).map(|t| t.to_string());
    }

    let mut req = Request::new(());
    if let Ok(m) = Method::from_bytes(method) {
        *req.method_mut() = m;
    }
    if let Ok(uri) = http::Uri::try_from(authority) {
        *req.uri_mut() = uri;
    }
    for (name, value) in [
        (BAGGAGE_HEADER, baggage),
        (FORWARDED_HEADER, forwarded),
        (TRACEPARENT_HEADER, traceparent),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            req.headers_mut().insert(name, v);
        }
    }
    if let Ok(parsed) = parse_connect_request(&req) {
        let _ = parse_connect_request(&build_connect_request(&parsed));
    }
}
