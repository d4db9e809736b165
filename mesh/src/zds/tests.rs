//! End-to-end tests over real SEQPACKET sockets in a temporary directory: both ends of the
//! protocol, real fd passing (including a real network-namespace fd), and the error paths a
//! misbehaving peer can trigger.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use super::codec::{encode_request, OutRequest};
use super::socket::SeqPacket;
use super::{
    Version, WorkloadInfo, ZdsAgentConn, ZdsClient, ZdsError, ZdsRequest, ZdsServer,
    MAX_MESSAGE_LEN,
};

/// A per-test directory for the socket, removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ambit-zds-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("zds.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A connected (ztunnel, agent) pair with the hello exchanged.
async fn connected(path: &Path) -> (ZdsClient, ZdsAgentConn) {
    let server = ZdsServer::bind(path).expect("bind");
    let (client, agent) = tokio::join!(ZdsClient::connect(path), server.accept());
    (client.expect("connect"), agent.expect("accept"))
}

fn inode(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).expect("fstat");
    (st.st_dev, st.st_ino)
}

fn info() -> WorkloadInfo {
    WorkloadInfo {
        name: "web-0".to_string(),
        namespace: "shop".to_string(),
        service_account: "web".to_string(),
    }
}

/// A nonblocking pipe. Once every copy of the write end is closed, reading the read end returns
/// end-of-file instead of `EAGAIN`: that is how the tests prove a passed fd was not leaked.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).expect("pipe2")
}

fn all_writers_closed(read_end: &OwnedFd) -> bool {
    match nix::unistd::read(read_end.as_raw_fd(), &mut [0u8; 1]) {
        Ok(0) => true,
        Err(Errno::EAGAIN) => false,
        other => panic!("unexpected pipe read result {other:?}"),
    }
}

/// ztunnel side: receive one request and answer it with `error`.
async fn recv_and_ack(client: &mut ZdsClient, error: Option<&str>) -> Result<ZdsRequest, ZdsError> {
    let request = client.recv().await;
    client.ack(error.map(str::to_string)).await.expect("ack");
    request
}

#[tokio::test]
async fn add_passes_the_same_file_and_success_ack_reaches_the_agent() {
    let dir = TempDir::new("add-file");
    let (mut client, mut agent) = connected(&dir.sock()).await;
    assert_eq!(agent.hello_version(), Version::V1);

    let file = std::fs::File::open("/dev/null").unwrap();
    let (sent, received) = tokio::join!(
        agent.send_add("pod-1", Some(info()), file.as_fd()),
        recv_and_ack(&mut client, None),
    );
    sent.expect("ztunnel acked success");
    match received.expect("add decodes") {
        ZdsRequest::Add {
            uid,
            workload_info,
            netns,
        } => {
            assert_eq!(uid, "pod-1");
            assert_eq!(workload_info, Some(info()));
            // A new fd number in our table, but the same open file.
            assert_ne!(netns.as_raw_fd(), file.as_raw_fd());
            assert_eq!(inode(netns.as_fd()), inode(file.as_fd()));
            let flags = fcntl(netns.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
            assert!(
                FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC),
                "received fds must be close-on-exec"
            );
        }
        other => panic!("expected add, got {other:?}"),
    }
}

#[tokio::test]
async fn add_passes_a_real_netns_and_error_ack_reaches_the_agent() {
    let dir = TempDir::new("add-netns");
    let (mut client, mut agent) = connected(&dir.sock()).await;

    let netns = std::fs::File::open("/proc/self/ns/net").expect("open own netns");
    let (sent, received) = tokio::join!(
        agent.send_add("pod-2", None, netns.as_fd()),
        recv_and_ack(&mut client, Some("netns busy")),
    );
    assert!(
        matches!(&sent, Err(ZdsError::Rejected(text)) if text == "netns busy"),
        "{sent:?}"
    );
    match received.expect("add decodes") {
        ZdsRequest::Add {
            uid,
            workload_info,
            netns: got,
        } => {
            assert_eq!(uid, "pod-2");
            assert_eq!(workload_info, None);
            assert_eq!(inode(got.as_fd()), inode(netns.as_fd()));
        }
        other => panic!("expected add, got {other:?}"),
    }
    // A rejection is about one request; the connection carries on.
    let (sent, received) = tokio::join!(agent.send_del("pod-2"), recv_and_ack(&mut client, None));
    sent.unwrap();
    assert!(matches!(received, Ok(ZdsRequest::Del { uid }) if uid == "pod-2"));
}

#[tokio::test]
async fn keep_del_and_snapshot_sent_round_trip() {
    let dir = TempDir::new("kds");
    let (mut client, mut agent) = connected(&dir.sock()).await;

    let (sent, received) = tokio::join!(agent.send_keep("pod-k"), recv_and_ack(&mut client, None));
    sent.unwrap();
    assert!(matches!(received, Ok(ZdsRequest::Keep { uid }) if uid == "pod-k"));

    let (sent, received) =
        tokio::join!(agent.send_snapshot_sent(), recv_and_ack(&mut client, None));
    sent.unwrap();
    assert!(matches!(received, Ok(ZdsRequest::SnapshotSent)));

    let (sent, received) = tokio::join!(
        agent.send_del("pod-d"),
        recv_and_ack(&mut client, Some("unknown pod"))
    );
    assert!(matches!(sent, Err(ZdsError::Rejected(text)) if text == "unknown pod"));
    assert!(matches!(received, Ok(ZdsRequest::Del { uid }) if uid == "pod-d"));
}

#[tokio::test]
async fn garbage_datagram_is_a_decode_error_and_the_connection_survives() {
    let dir = TempDir::new("garbage");
    let (mut client, agent) = connected(&dir.sock()).await;

    agent.sock.send(&[0xff, 0xff, 0xff], None).await.unwrap();
    let err = client.recv().await.unwrap_err();
    assert!(matches!(err, ZdsError::Decode(_)), "{err:?}");
    assert!(!err.is_fatal());

    agent
        .sock
        .send(&[0x12, 0x03, 0x12, 0x01, b'p'], None)
        .await
        .unwrap();
    assert!(matches!(client.recv().await, Ok(ZdsRequest::Del { uid }) if uid == "p"));
}

#[tokio::test]
async fn add_without_fd_is_missing_fd() {
    let dir = TempDir::new("nofd");
    let (mut client, agent) = connected(&dir.sock()).await;

    let add = encode_request(OutRequest::Add {
        uid: "pod",
        info: None,
    })
    .unwrap();
    agent.sock.send(&add, None).await.unwrap();
    assert!(matches!(client.recv().await, Err(ZdsError::MissingFd)));
}

#[tokio::test]
async fn fds_on_a_del_are_refused_and_closed() {
    let dir = TempDir::new("extrafd");
    let (mut client, agent) = connected(&dir.sock()).await;

    let (read_end, write_end) = pipe();
    let del = encode_request(OutRequest::Del { uid: "pod" }).unwrap();
    agent
        .sock
        .send(&del, Some(write_end.as_fd()))
        .await
        .unwrap();
    drop(write_end);
    assert!(matches!(
        client.recv().await,
        Err(ZdsError::UnexpectedFds(1))
    ));
    assert!(
        all_writers_closed(&read_end),
        "the refused fd must have been closed"
    );
}

#[tokio::test]
async fn oversized_datagram_is_truncated_and_its_fd_closed() {
    let dir = TempDir::new("trunc");
    let (mut client, agent) = connected(&dir.sock()).await;

    let (read_end, write_end) = pipe();
    let big = vec![0u8; MAX_MESSAGE_LEN + 1];
    agent
        .sock
        .send(&big, Some(write_end.as_fd()))
        .await
        .unwrap();
    drop(write_end);
    assert!(matches!(client.recv().await, Err(ZdsError::Truncated)));
    assert!(all_writers_closed(&read_end));
}

#[tokio::test]
async fn agent_disconnect_is_closed() {
    let dir = TempDir::new("agent-gone");
    let (mut client, agent) = connected(&dir.sock()).await;
    drop(agent);
    let err = client.recv().await.unwrap_err();
    assert!(matches!(err, ZdsError::Closed), "{err:?}");
    assert!(err.is_fatal());
}

#[tokio::test]
async fn ztunnel_disconnect_is_closed_for_the_agent() {
    let dir = TempDir::new("zt-gone");
    let (client, mut agent) = connected(&dir.sock()).await;
    drop(client);
    // Whether the send or the wait for the ack notices first, it is the same error.
    let err = agent.send_del("pod").await.unwrap_err();
    assert!(matches!(err, ZdsError::Closed), "{err:?}");
}

#[tokio::test]
async fn unsupported_hello_version_is_refused() {
    let dir = TempDir::new("version");
    let server = ZdsServer::bind(&dir.sock()).unwrap();
    let raw = SeqPacket::connect(&dir.sock()).unwrap();
    // ZdsHello{version: 2}.
    raw.send(&[0x08, 0x02], None).await.unwrap();
    assert!(matches!(
        server.accept().await,
        Err(ZdsError::VersionMismatch(2))
    ));
}

#[tokio::test]
async fn silent_ztunnel_times_out_in_accept() {
    let dir = TempDir::new("nohello");
    // Short, but the outcome does not depend on it: this peer never sends a hello at all.
    let server = ZdsServer::bind(&dir.sock())
        .unwrap()
        .with_hello_timeout(Duration::from_millis(20));
    let _raw = SeqPacket::connect(&dir.sock()).unwrap();
    match server.accept().await {
        Err(ZdsError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
        other => panic!("expected a hello timeout, got {other:?}"),
    }
    // The server is still usable for the next ztunnel.
    let path = dir.sock();
    let (client, agent) = tokio::join!(ZdsClient::connect(&path), server.accept());
    client.unwrap();
    agent.unwrap();
}

#[tokio::test]
async fn ack_of_an_abandoned_request_is_not_taken_for_the_next_one() {
    let dir = TempDir::new("stale");
    let (mut client, mut agent) = connected(&dir.sock()).await;

    // ztunnel is not answering yet, so this times out after the request went out.
    let abandoned = tokio::time::timeout(Duration::from_millis(20), agent.send_keep("old")).await;
    assert!(
        abandoned.is_err(),
        "no ack was sent, the request cannot have completed"
    );

    let ztunnel = async {
        let old = recv_and_ack(&mut client, Some("late failure")).await;
        let new = recv_and_ack(&mut client, None).await;
        (old, new)
    };
    let (sent, (old, new)) = tokio::join!(agent.send_del("new"), ztunnel);
    // The late failure belongs to "old"; "new" was acked with success.
    sent.expect("the ack for del must be its own, not the stale one");
    assert!(matches!(old, Ok(ZdsRequest::Keep { uid }) if uid == "old"));
    assert!(matches!(new, Ok(ZdsRequest::Del { uid }) if uid == "new"));
}

#[tokio::test]
async fn connect_without_agent_is_an_io_error() {
    let dir = TempDir::new("noagent");
    assert!(matches!(
        ZdsClient::connect(&dir.sock()).await,
        Err(ZdsError::Io(_))
    ));
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_but_not_other_files() {
    let dir = TempDir::new("rebind");
    let first = ZdsServer::bind(&dir.sock()).unwrap();
    drop(first);
    // The socket file outlives its server (as after a crash); binding again must work.
    let (_client, agent) = connected(&dir.sock()).await;
    assert_eq!(agent.hello_version(), Version::V1);

    let file = dir.0.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(ZdsServer::bind(&file), Err(ZdsError::Io(_))));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = TempDir::new("nort");
    assert!(matches!(ZdsServer::bind(&dir.sock()), Err(ZdsError::Io(_))));
}
