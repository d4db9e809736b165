//! The results table: printed, and written as a markdown fragment for docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// What a row must meet.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// mesh / no-mesh ≥ this.
    RatioAtLeast(f64),
    /// mesh − no-mesh ≤ this.
    AddedAtMost(f64),
    /// The value itself ≤ this.
    AtMost(f64),
}

pub struct Row {
    pub name: String,
    pub mesh: f64,
    pub base: Option<f64>,
    pub target: Option<Target>,
}

impl Row {
    pub fn ratio(name: String, mesh: f64, base: f64, target: Option<Target>) -> Row {
        Row {
            name,
            mesh,
            base: Some(base),
            target,
        }
    }

    pub fn added(name: String, mesh: f64, base: f64, target: Target) -> Row {
        Row {
            name,
            mesh,
            base: Some(base),
            target: Some(target),
        }
    }

    pub fn absolute(name: String, value: f64, target: Target) -> Row {
        Row {
            name,
            mesh: value,
            base: None,
            target: Some(target),
        }
    }

    /// The figure the target applies to: ratio, added amount, or the value.
    fn compared(&self) -> Option<f64> {
        match (self.target, self.base) {
            (Some(Target::AddedAtMost(_)), Some(b)) => Some(self.mesh - b),
            (Some(Target::AtMost(_)), _) => None,
            (_, Some(b)) => Some(self.mesh / b),
            (_, None) => None,
        }
    }

    fn compared_text(&self) -> String {
        match (self.target, self.compared()) {
            (Some(Target::AddedAtMost(_)), Some(v)) => format!("{v:+.0} µs"),
            (_, Some(v)) => format!("{v:.2}×"),
            (_, None) => "—".into(),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(Target::RatioAtLeast(r)) => format!("≥ {r:.2}×"),
            Some(Target::AddedAtMost(a)) => format!("added ≤ {a:.0} µs"),
            Some(Target::AtMost(v)) => format!("≤ {v:.1}"),
            None => "—".into(),
        }
    }

    /// "pass", "MISS (by …)", or "—" when there is no target.
    fn verdict(&self) -> String {
        let Some(target) = self.target else {
            return "—".into();
        };
        match target {
            Target::RatioAtLeast(r) => {
                let v = self.compared().unwrap_or(f64::NAN);
                if v >= r {
                    "pass".into()
                } else {
                    format!("MISS (short by {:.2}×)", r - v)
                }
            }
            Target::AddedAtMost(a) => {
                let v = self.compared().unwrap_or(f64::NAN);
                if v <= a {
                    "pass".into()
                } else {
                    format!("MISS (over by {:.0} µs)", v - a)
                }
            }
            Target::AtMost(limit) => {
                if self.mesh <= limit {
                    "pass".into()
                } else {
                    format!("MISS (over by {:.2})", self.mesh - limit)
                }
            }
        }
    }

    pub fn passed(&self) -> bool {
        let v = self.verdict();
        v == "pass" || v == "—"
    }
}

fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub quick: bool,
    pub secs: u64,
    pub malloc: String,
    pub elapsed: Duration,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| metric | mesh | no mesh | mesh vs no mesh | target | result |\n|---|---:|---:|---:|---|---|"
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r.name,
                num(r.mesh),
                r.base.map(num).unwrap_or_else(|| "—".into()),
                r.compared_text(),
                r.target_text(),
                r.verdict()
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "Runs of {} s each; ztunnel allocator: {}; after-load wait {}; bench took {:.0} s.",
            self.secs,
            self.malloc,
            if self.quick {
                "5 s (BENCH_QUICK=1, the target is for 60 s)"
            } else {
                "60 s"
            },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(md);
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        md
    }

    pub fn print_and_write(&self, path: &Path) {
        let md = self.markdown();
        println!("\n{md}");
        let missed = self.rows.iter().filter(|r| !r.passed()).count();
        println!(
            "{} of {} targets met",
            self.rows.iter().filter(|r| r.target.is_some()).count() - missed,
            self.rows.iter().filter(|r| r.target.is_some()).count()
        );
        match std::fs::write(path, &md) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    }
}
