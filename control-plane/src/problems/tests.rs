use super::*;

fn problem(severity: Severity, name: &str, message: &str) -> Problem {
    Problem {
        severity,
        object: ObjectRef {
            kind: "AuthorizationPolicy".into(),
            namespace: "shop".into(),
            name: name.into(),
        },
        field: "spec.rules[0].to[0].operation.methods".into(),
        message: message.into(),
    }
}

fn set<const N: usize>(ps: [Problem; N]) -> BTreeSet<Problem> {
    ps.into_iter().collect()
}

#[test]
fn diff_names_added_and_resolved_problems_only() {
    let a = problem(Severity::Error, "a", "bad");
    let b = problem(Severity::Warning, "b", "HTTP fields ignored");
    let c = problem(Severity::Error, "c", "bad selector");
    let changes = diff(&set([a.clone(), b.clone()]), &set([b.clone(), c.clone()]));
    assert_eq!(changes.added, vec![c]);
    assert_eq!(changes.resolved, vec![a]);
    assert!(diff(&set([b.clone()]), &set([b])).is_empty());
}

#[test]
fn a_changed_message_is_a_new_problem() {
    // The same object with a different complaint must be reported again, not swallowed as
    // "already known".
    let old = problem(Severity::Error, "a", "methods: not a list");
    let new = problem(Severity::Error, "a", "methods: empty string");
    let changes = diff(&set([old.clone()]), &set([new.clone()]));
    assert_eq!(changes.added, vec![new]);
    assert_eq!(changes.resolved, vec![old]);
}

#[test]
fn update_reports_changes_once_and_keeps_the_set_current() {
    let problems = ProblemSet::default();
    let mut rx = problems.subscribe();
    let a = problem(Severity::Error, "a", "bad");
    let first = problems.update("test", [a.clone(), a.clone()]);
    assert_eq!(first.added, vec![a.clone()]);
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    // Retranslating the same config: nothing new, nothing logged, no wake-up for reporters.
    assert!(problems.update("test", [a.clone()]).is_empty());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(problems.current().len(), 1);
    // Fixed: resolved, and the set is empty.
    let fixed = problems.update("test", []);
    assert_eq!(fixed.resolved, vec![a]);
    assert!(problems.current().is_empty());
}

#[test]
fn report_counts_and_round_trips_as_json() {
    let problems = ProblemSet::default();
    problems.update(
        "test",
        [
            problem(Severity::Error, "a", "bad"),
            problem(Severity::Warning, "b", "HTTP fields ignored"),
        ],
    );
    let report = problems.report();
    assert_eq!((report.errors, report.warnings), (1, 1));
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains(r#""severity":"error""#), "{json}");
    assert!(json.contains(r#""kind":"AuthorizationPolicy""#), "{json}");
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
}

#[test]
fn table_names_object_field_and_message() {
    let report = Report::new(&[
        problem(Severity::Error, "a", "bad"),
        Problem {
            severity: Severity::Warning,
            object: ObjectRef::default(),
            field: String::new(),
            message: "cannot read [x.yaml]".into(),
        },
    ]);
    let table = format_table(&report);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SEVERITY"), "{table}");
    assert!(lines[1].starts_with("ERROR"), "{table}");
    assert!(lines[1].contains("AuthorizationPolicy shop/a"), "{table}");
    assert!(
        lines[1].contains("spec.rules[0].to[0].operation.methods"),
        "{table}"
    );
    assert!(
        lines[2].contains("object (unnamed)") && lines[2].contains(" - "),
        "{table}"
    );
    assert_eq!(lines[3], "1 error(s), 1 warning(s)");
    assert_eq!(format_table(&Report::default()), "no problems\n");
}
