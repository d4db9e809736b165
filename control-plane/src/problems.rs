//! The current set of config problems: every object the last translation rejected (severity
//! error: skipped) or applied with a change (severity warning), shared by the config source
//! that produces it and everything that reports it — the log, the admin endpoint
//! (`GET /debug/problems`), Kubernetes Events and the `ambit` CLI.
//!
//! Invariants:
//! - [`ProblemSet::update`] replaces the whole set after each translation and logs only the
//!   difference (new problems at error/warn, resolved ones at info): a source that retranslates
//!   every few seconds must not repeat a broken object in the log each time.
//! - The set is sorted and free of duplicates, so equal configs give equal listings.
//! - The wire form ([`Report`]) is what the admin endpoint serves and the CLI reads; both sides
//!   use the same types and the same [`format_table`], so a listing looks the same online and
//!   offline (`ambit config check <dir>`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::objects::ObjectRef;
use crate::translate::{Problem, Severity};

#[cfg(test)]
mod tests;

/// What changed between two problem sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// In the new set, not in the old one.
    pub added: Vec<Problem>,
    /// In the old set, gone from the new one (the object was fixed or deleted).
    pub resolved: Vec<Problem>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.resolved.is_empty()
    }
}

/// Problems of `new` that `old` lacks, and of `old` that `new` lacks, both sorted.
pub fn diff(old: &BTreeSet<Problem>, new: &BTreeSet<Problem>) -> Changes {
    Changes {
        added: new.difference(old).cloned().collect(),
        resolved: old.difference(new).cloned().collect(),
    }
}

/// The current problems, shared between the config source (writer) and reporters (readers).
/// Cloning shares the set.
#[derive(Clone)]
pub struct ProblemSet {
    tx: Arc<watch::Sender<Arc<BTreeSet<Problem>>>>,
}

impl Default for ProblemSet {
    fn default() -> Self {
        ProblemSet {
            tx: Arc::new(watch::Sender::new(Arc::default())),
        }
    }
}

impl std::fmt::Debug for ProblemSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProblemSet")
            .field("problems", &self.tx.borrow().len())
            .finish()
    }
}

impl ProblemSet {
    /// Replaces the set with the problems of the latest translation; logs and returns what
    /// changed. `source` names the config source in the log (`folder /etc/ambit`, `kubernetes`).
    pub fn update(&self, source: &str, problems: impl IntoIterator<Item = Problem>) -> Changes {
        let new: BTreeSet<Problem> = problems.into_iter().collect();
        let changes = diff(&self.tx.borrow(), &new);
        for p in &changes.added {
            match p.severity {
                Severity::Error => tracing::error!(source, "{p}"),
                Severity::Warning => tracing::warn!(source, "{p}"),
            }
        }
        for p in &changes.resolved {
            tracing::info!(source, "resolved: {p}");
        }
        if !changes.is_empty() {
            // `send_replace` stores the value even when nobody subscribed yet.
            self.tx.send_replace(Arc::new(new));
        }
        changes
    }

    /// The current problems, sorted.
    pub fn current(&self) -> Arc<BTreeSet<Problem>> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every later change of the set (intermediate sets may be skipped;
    /// the newest is always seen).
    pub fn subscribe(&self) -> watch::Receiver<Arc<BTreeSet<Problem>>> {
        self.tx.subscribe()
    }

    /// The current problems in wire form.
    pub fn report(&self) -> Report {
        Report::new(self.current().iter())
    }
}

/// One problem as the admin endpoint serves it and the CLI reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemEntry {
    /// `error` (object or part skipped) or `warning` (applied, but not as written).
    pub severity: String,
    /// Empty when the document did not say (a YAML syntax error, an unreadable file).
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// Path of the field at fault; empty when the problem is about the whole object.
    pub field: String,
    pub message: String,
}

impl From<&Problem> for ProblemEntry {
    fn from(p: &Problem) -> Self {
        let ObjectRef {
            kind,
            namespace,
            name,
        } = p.object.clone();
        ProblemEntry {
            severity: p.severity.to_string(),
            kind,
            namespace,
            name,
            field: p.field.clone(),
            message: p.message.clone(),
        }
    }
}

impl ProblemEntry {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error.to_string()
    }
}

/// `GET /debug/problems`: every current problem plus counts, so a caller can decide without
/// counting (`ambit config problems` exits non-zero when `errors > 0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub errors: usize,
    pub warnings: usize,
    pub problems: Vec<ProblemEntry>,
}

impl Report {
    pub fn new<'a>(problems: impl IntoIterator<Item = &'a Problem>) -> Report {
        let problems: Vec<ProblemEntry> = problems.into_iter().map(ProblemEntry::from).collect();
        let errors = problems.iter().filter(|p| p.is_error()).count();
        Report {
            errors,
            warnings: problems.len() - errors,
            problems,
        }
    }
}

/// A human table of `report`: one line per problem, columns aligned, then a count line.
pub fn format_table(report: &Report) -> String {
    let mut out = String::new();
    if report.problems.is_empty() {
        out.push_str("no problems\n");
        return out;
    }
    let rows: Vec<[String; 4]> = report
        .problems
        .iter()
        .map(|p| {
            let object = ObjectRef {
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            };
            let field = if p.field.is_empty() { "-" } else { &p.field };
            [
                p.severity.to_uppercase(),
                object.to_string(),
                field.to_string(),
                p.message.clone(),
            ]
        })
        .collect();
    let header = [
        "SEVERITY".to_string(),
        "OBJECT".to_string(),
        "FIELD".to_string(),
        "MESSAGE".to_string(),
    ];
    let width = |i: usize| {
        rows.iter()
            .chain([&header])
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    for row in [&header].into_iter().chain(&rows) {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    let _ = writeln!(
        out,
        "{} error(s), {} warning(s)",
        report.errors, report.warnings
    );
    out
}
