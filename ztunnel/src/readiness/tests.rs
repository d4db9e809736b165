use super::*;

#[test]
fn ready_with_no_tasks() {
    let r = Readiness::new();
    assert!(r.is_ready());
    assert!(r.pending().is_empty());
}

#[test]
fn ready_only_after_every_guard_is_released() {
    let r = Readiness::new();
    let xds = r.register("xds");
    let cert = r.register("cert");
    assert!(!r.is_ready());
    assert_eq!(r.pending(), vec!["cert", "xds"]);
    xds.ready();
    assert!(!r.is_ready());
    assert_eq!(r.pending(), vec!["cert"]);
    drop(cert);
    assert!(r.is_ready());
}

#[test]
fn same_name_registered_twice_needs_both_released() {
    let r = Readiness::new();
    let a = r.register("listener");
    let b = r.register("listener");
    assert_eq!(r.pending(), vec!["listener", "listener"]);
    drop(a);
    assert_eq!(r.pending(), vec!["listener"]);
    drop(b);
    assert!(r.is_ready());
}

#[test]
fn clones_share_state() {
    let r = Readiness::new();
    let clone = r.clone();
    let guard = clone.register("x");
    assert!(!r.is_ready());
    guard.ready();
    assert!(r.is_ready());
}

#[test]
fn guard_released_from_another_thread() {
    let r = Readiness::new();
    let guard = r.register("worker");
    std::thread::spawn(move || guard.ready()).join().unwrap();
    assert!(r.is_ready());
}
