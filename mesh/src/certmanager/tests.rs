//! Rotation is driven by tokio's paused clock (auto-advancing to the worker's next deadline
//! whenever everything else is idle), so a 24 h certificate rotates in milliseconds of real time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::tls::testutil::{handshake, id, ping_pong};
use crate::tls::{client_config, server_config};

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A file CA that counts fetches, can be told to fail, and can hold fetches at a gate.
struct TestSource {
    ca: Arc<CertificateAuthority>,
    lifetime: Duration,
    fetches: AtomicUsize,
    fail: AtomicBool,
    gate: Option<Arc<Semaphore>>,
    started: Notify,
}

impl TestSource {
    fn new(lifetime: Duration) -> Arc<Self> {
        Arc::new(TestSource {
            ca: Arc::new(CertificateAuthority::generate("cluster.local").unwrap()),
            lifetime,
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
            gate: None,
            started: Notify::new(),
        })
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl CertSource for TestSource {
    fn fetch(&self, id: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        self.started.notify_one();
        let result = if self.fail.load(Ordering::SeqCst) {
            Err(CaError::Unavailable {
                identity: id.to_string(),
                reason: "CA is down".to_string(),
            })
        } else {
            self.ca.issue(id, self.lifetime)
        };
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.acquire().await.expect("gate open").forget();
            }
            result
        })
    }
}

fn manager(source: &Arc<TestSource>) -> SecretManager {
    SecretManager::new(source.clone())
}

/// Waits (on the paused clock) until `pred` holds for `id`'s status.
async fn wait_for(rx: &mut watch::Receiver<CertStatus>, pred: impl Fn(&CertStatus) -> bool) {
    loop {
        if pred(&rx.borrow_and_update()) {
            return;
        }
        rx.changed().await.expect("worker alive");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_gets_share_one_fetch() {
    let mut source = TestSource::new(DAY);
    let gate = Arc::new(Semaphore::new(0));
    Arc::get_mut(&mut source).unwrap().gate = Some(gate.clone());
    let mgr = manager(&source);
    let sleep = id(SLEEP);

    // All ten callers are waiting before the one fetch is allowed to finish.
    let gets = futures::future::join_all((0..10).map(|_| mgr.get(&sleep)));
    let release = async {
        source.started.notified().await;
        gate.add_permits(1);
    };
    let (certs, ()) = tokio::join!(gets, release);
    let serials: Vec<String> = certs
        .into_iter()
        .map(|c| c.unwrap().serial.clone())
        .collect();
    assert!(serials.iter().all(|s| s == &serials[0]));
    assert_eq!(source.fetches(), 1);
    // And later callers hit the cache.
    assert_eq!(mgr.get(&sleep).await.unwrap().serial, serials[0]);
    assert_eq!(source.fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn rotates_at_jittered_half_life_without_cutting_open_connections() {
    let source = TestSource::new(DAY);
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    let server_cert = source.ca.issue(&id(SERVER), DAY).unwrap();
    let server = server_config(&server_cert).unwrap();

    let old = mgr.get(&sleep).await.unwrap();
    let (c, s) = handshake(
        server.clone(),
        client_config(&old, vec![id(SERVER)]).unwrap(),
    )
    .await;
    let (mut old_client, mut old_server) = (c.unwrap(), s.unwrap());

    let start = Instant::now();
    let mut rx = mgr.subscribe(&sleep).unwrap();
    wait_for(&mut rx, |s| {
        s.state == CertState::Available && s.cert.as_ref().is_some_and(|c| c.serial != old.serial)
    })
    .await;
    let elapsed = start.elapsed();
    // Half of (24 h + 60 s backdating) ± 10 %, measured from issuance 60 s "ago".
    let lifetime = DAY + Duration::from_secs(60);
    let backdate = Duration::from_secs(60);
    assert!(elapsed >= lifetime.mul_f64(0.45) - backdate, "{elapsed:?}");
    assert!(elapsed <= lifetime.mul_f64(0.55) - backdate, "{elapsed:?}");
    assert_eq!(source.fetches(), 2);

    // The connection made with the old certificate still carries data.
    ping_pong(&mut old_client, &mut old_server).await;

    // A new connection presents the new certificate.
    let new = mgr.get(&sleep).await.unwrap();
    assert_ne!(new.serial, old.serial);
    let (c, s) = handshake(server, client_config(&new, vec![id(SERVER)]).unwrap()).await;
    let (mut new_client, mut new_server) = (c.unwrap(), s.unwrap());
    ping_pong(&mut new_client, &mut new_server).await;
    let presented = &new_server.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(Some(presented), new.leaf());
    assert_eq!(
        old_server.get_ref().1.peer_certificates().unwrap().first(),
        old.leaf()
    );
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_keeps_serving_the_old_cert_until_it_expires() {
    let source = TestSource::new(DAY);
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    let old = mgr.get(&sleep).await.unwrap();
    source.fail.store(true, Ordering::SeqCst);

    let mut rx = mgr.subscribe(&sleep).unwrap();
    wait_for(&mut rx, |s| s.failures >= 3).await;
    assert_eq!(mgr.get(&sleep).await.unwrap().serial, old.serial);
    let dump = mgr.dump();
    assert_eq!(dump[0].state, CertState::Retrying);
    assert_eq!(dump[0].serial.as_deref(), Some(old.serial.as_str()));
    assert!(dump[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("CA is down"));

    // Still failing a day later: the old certificate is past its expiry and no longer served.
    tokio::time::sleep(DAY).await;
    assert_eq!(
        mgr.get(&sleep).await.unwrap_err(),
        CaError::Expired(SLEEP.to_string())
    );
    assert_eq!(mgr.dump()[0].state, CertState::Expired);
    // Backoff is capped, not runaway and not stuck: roughly one retry per 30 s.
    let retries = source.fetches();
    assert!((1_000..10_000).contains(&retries), "{retries}");

    // The CA comes back: the next retry succeeds.
    source.fail.store(false, Ordering::SeqCst);
    wait_for(&mut rx, |s| s.state == CertState::Available).await;
    let new = mgr.get(&sleep).await.unwrap();
    assert_ne!(new.serial, old.serial);
    assert_eq!(mgr.dump()[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_reported_then_retried() {
    let source = TestSource::new(DAY);
    source.fail.store(true, Ordering::SeqCst);
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    assert!(matches!(
        mgr.get(&sleep).await,
        Err(CaError::Unavailable { reason, .. }) if reason == "CA is down"
    ));
    source.fail.store(false, Ordering::SeqCst);
    let mut rx = mgr.subscribe(&sleep).unwrap();
    wait_for(&mut rx, |s| s.state == CertState::Available).await;
    assert_eq!(mgr.get(&sleep).await.unwrap().identity, sleep);
}

#[tokio::test(start_paused = true)]
async fn a_hung_fetch_times_out_and_is_retried() {
    let mut source = TestSource::new(DAY);
    let gate = Arc::new(Semaphore::new(0));
    Arc::get_mut(&mut source).unwrap().gate = Some(gate.clone());
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    // Nobody opens the gate: the first fetch hangs until the timeout fails it.
    let err = mgr.get(&sleep).await.unwrap_err();
    assert!(
        matches!(&err, CaError::Unavailable { reason, .. } if reason.contains("timed out")),
        "{err}"
    );
    // The retry gets through once the CA answers.
    gate.add_permits(1);
    let mut rx = mgr.subscribe(&sleep).unwrap();
    wait_for(&mut rx, |s| s.state == CertState::Available).await;
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_certificate_for_the_wrong_identity_is_refused() {
    struct Liar(Arc<CertificateAuthority>);
    impl CertSource for Liar {
        fn fetch(&self, _: &Identity) -> BoxFuture<'static, Result<WorkloadCertificate, CaError>> {
            let result = self.0.issue(&id(SERVER), DAY);
            Box::pin(async move { result })
        }
    }
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let mgr = SecretManager::new(Arc::new(Liar(ca)));
    assert!(matches!(
        mgr.get(&id(SLEEP)).await,
        Err(CaError::WrongIdentity { got, .. }) if got == SERVER
    ));
}

#[tokio::test(start_paused = true)]
async fn forget_stops_renewal_and_drops_the_entry() {
    let source = TestSource::new(DAY);
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    let held = mgr.get(&sleep).await.unwrap();
    let mut rx = mgr.subscribe(&sleep).unwrap();
    mgr.forget(&sleep);
    assert!(mgr.dump().is_empty());
    // The worker is gone: its channel closes and no renewal happens, even days later.
    assert!(rx.changed().await.is_err());
    tokio::time::sleep(DAY * 3).await;
    assert_eq!(source.fetches(), 1);
    // Holders keep their certificate; a new get starts afresh.
    assert_eq!(held.identity, sleep);
    assert_ne!(mgr.get(&sleep).await.unwrap().serial, held.serial);
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn dump_lists_identities_with_serial_expiry_and_state() {
    let source = TestSource::new(DAY);
    let mgr = manager(&source);
    let a = mgr.get(&id(SLEEP)).await.unwrap();
    mgr.get(&id(SERVER)).await.unwrap();
    let dump = mgr.dump();
    assert_eq!(
        dump.iter().map(|d| d.identity.as_str()).collect::<Vec<_>>(),
        vec![SERVER, SLEEP],
        "sorted"
    );
    let json = serde_json::to_value(&dump[1]).unwrap();
    assert_eq!(json["identity"], SLEEP);
    assert_eq!(json["serial"], a.serial.as_str());
    assert_eq!(json["state"], "available");
    assert_eq!(json["not_after"], rfc3339(a.not_after).as_str());
}

#[tokio::test]
async fn real_two_second_certificates_rotate_on_the_wall_clock() {
    let source = TestSource::new(Duration::from_secs(2));
    let mgr = manager(&source);
    let sleep = id(SLEEP);
    let old = mgr.get(&sleep).await.unwrap();
    let mut rx = mgr.subscribe(&sleep).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        wait_for(&mut rx, |s| {
            s.cert.as_ref().is_some_and(|c| c.serial != old.serial)
        }),
    )
    .await
    .expect("rotated within 5 s");
    let new = mgr.get(&sleep).await.unwrap();
    assert!(new.not_after >= old.not_after);
}

#[test]
fn backoff_doubles_and_caps() {
    let config = SecretManagerConfig::default();
    let within = |d: Duration, base: Duration| d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1);
    assert!(within(backoff(&config, 1), Duration::from_millis(500)));
    assert!(within(backoff(&config, 2), Duration::from_secs(1)));
    assert!(within(backoff(&config, 4), Duration::from_secs(4)));
    assert!(within(backoff(&config, 10), Duration::from_secs(30)));
    assert!(within(backoff(&config, u32::MAX), Duration::from_secs(30)));
}
