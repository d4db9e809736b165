//! Nonblocking Unix `SOCK_SEQPACKET` sockets with SCM_RIGHTS fd passing, over tokio's `AsyncFd`.
//!
//! SEQPACKET keeps message boundaries (one `recvmsg` = one datagram) and is connection oriented
//! (peer close is seen as a 0-byte read), which is exactly what ZDS relies on.
//!
//! Fd hygiene: received fds arrive with `O_CLOEXEC` (`MSG_CMSG_CLOEXEC`) and are wrapped in
//! [`OwnedFd`] straight out of `recvmsg`, before any check can return early, so every error path
//! closes them. The control buffer has room for the kernel's per-message maximum of fds, so the
//! kernel never has to drop (or half-deliver) fds for lack of space.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::codec::MAX_MESSAGE_LEN;
use super::ZdsError;

/// The kernel's cap on fds in one message (`SCM_MAX_FD`, include/net/scm.h). Multiple
/// SCM_RIGHTS headers in one `sendmsg` are merged under the same cap, so a control buffer of this
/// size always holds every fd a peer can pass in one datagram.
const SCM_MAX_FD: usize = 253;

/// One received datagram with the fds that came with it.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// A connected SEQPACKET socket registered with the tokio reactor.
#[derive(Debug)]
pub(crate) struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacket {
    /// Connects to a listening SEQPACKET socket at `path`.
    ///
    /// A Unix connect never waits: it either succeeds at once or, when the listener's backlog is
    /// full, fails with `WouldBlock`, which the caller's reconnect loop treats like any refusal.
    pub(crate) fn connect(path: &Path) -> Result<Self, ZdsError> {
        let fd = new_socket()?;
        let addr = UnixAddr::new(path).map_err(io::Error::from)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(|errno| {
            let err = io::Error::from(errno);
            io::Error::new(
                err.kind(),
                format!("connecting to ZDS socket {}: {err}", path.display()),
            )
        })?;
        Self::from_connected(fd)
    }

    /// Wraps an already connected, nonblocking socket.
    pub(crate) fn from_connected(fd: OwnedFd) -> Result<Self, ZdsError> {
        Ok(SeqPacket { fd: register(fd)? })
    }

    /// Sends `bytes` as one datagram, with `fd` (if any) as SCM_RIGHTS ancillary data.
    pub(crate) async fn send(
        &self,
        bytes: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ZdsError> {
        let rights: Option<[RawFd; 1]> = fd.map(|fd| [fd.as_raw_fd()]);
        let sent = self
            .fd
            .async_io(Interest::WRITABLE, |sock| {
                let iov = [IoSlice::new(bytes)];
                let storage;
                let cmsgs: &[ControlMessage<'_>] = match &rights {
                    Some(rights) => {
                        storage = [ControlMessage::ScmRights(rights)];
                        &storage
                    }
                    None => &[],
                };
                // MSG_NOSIGNAL: a peer that went away must surface as EPIPE, not kill the process
                // with SIGPIPE.
                socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            })
            .await
            .map_err(peer_gone)?;
        // SEQPACKET sends are atomic; a short count would mean the kernel broke that promise.
        if sent != bytes.len() {
            return Err(ZdsError::Io(io::Error::other(format!(
                "short SEQPACKET send: {sent} of {} bytes",
                bytes.len()
            ))));
        }
        Ok(())
    }

    /// Receives one datagram. A 0-byte read is the peer closing ([`ZdsError::Closed`]).
    pub(crate) async fn recv(&self) -> Result<Datagram, ZdsError> {
        let received = self
            .fd
            .async_io(Interest::READABLE, |sock| recv_once(sock.as_raw_fd()))
            .await
            .map_err(peer_gone)?;
        // From here on the fds are owned: returning early closes them.
        if received.truncated {
            return Err(ZdsError::Truncated);
        }
        if received.bytes.is_empty() && received.fds.is_empty() {
            return Err(ZdsError::Closed);
        }
        Ok(Datagram {
            bytes: received.bytes,
            fds: received.fds,
        })
    }
}

/// A listening SEQPACKET socket registered with the tokio reactor.
#[derive(Debug)]
pub(crate) struct SeqPacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl SeqPacketListener {
    /// Binds and listens at `path`, first removing a stale socket left by a previous run (as
    /// istio-cni does). Anything at `path` that is not a socket is left alone and reported.
    pub(crate) fn bind(path: &Path) -> Result<Self, ZdsError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(ZdsError::Io(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ZdsError::Io(e)),
        }
        let fd = new_socket()?;
        let addr = UnixAddr::new(path).map_err(io::Error::from)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|errno| {
            let err = io::Error::from(errno);
            io::Error::new(
                err.kind(),
                format!("binding ZDS socket {}: {err}", path.display()),
            )
        })?;
        socket::listen(&fd, Backlog::MAXCONN).map_err(io::Error::from)?;
        Ok(SeqPacketListener { fd: register(fd)? })
    }

    /// Accepts one connection.
    pub(crate) async fn accept(&self) -> Result<SeqPacket, ZdsError> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |sock| {
                socket::accept4(
                    sock.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map(adopt_fd)
                .map_err(io::Error::from)
            })
            .await?;
        SeqPacket::from_connected(fd)
    }
}

fn new_socket() -> Result<OwnedFd, ZdsError> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?)
}

/// Registers `fd` with the current tokio reactor. Registration panics outside a runtime, so that
/// case is turned into an error first.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, ZdsError> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("ZDS sockets need a tokio runtime: {e}")))?;
    // SAFETY: `AsyncFd::register` needs the fd to stay open and the same for the AsyncFd's whole
    // life. An `OwnedFd` moved into it is a valid open fd that only the AsyncFd can close (on
    // drop, after deregistering), and its `as_raw_fd` always returns that same number.
    let registered = unsafe { AsyncFd::register(fd) };
    Ok(registered.map_err(io::Error::from)?)
}

/// A peer that has gone away shows up as one of several errnos depending on timing; they all
/// mean the same to ZDS.
fn peer_gone(err: io::Error) -> ZdsError {
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN) => ZdsError::Closed,
        _ => ZdsError::Io(err),
    }
}

/// What one `recvmsg` produced, fds already owned.
struct Received {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

fn recv_once(sock: RawFd) -> io::Result<Received> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; SCM_MAX_FD], nix::libc::ucred);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg_buf),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let len = msg.bytes;
    let mut truncated = msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    match msg.cmsgs() {
        Ok(cmsgs) => {
            for cmsg in cmsgs {
                // Other control messages (credentials, if someone enabled them) carry no fds and
                // are ignored.
                if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
                    fds.extend(raw_fds.into_iter().map(adopt_fd));
                }
            }
        }
        // nix refuses to parse a truncated control buffer. With room for SCM_MAX_FD fds this
        // cannot happen for SCM_RIGHTS; treat it as a truncated message regardless.
        Err(_) => truncated = true,
    }
    buf.truncate(len);
    Ok(Received {
        bytes: buf,
        fds,
        truncated,
    })
}

/// Takes ownership of an fd the kernel has just installed in our fd table for us.
#[allow(unsafe_code)]
fn adopt_fd(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` comes straight from a successful `recvmsg` SCM_RIGHTS message or `accept4`:
    // the kernel created it for this process moments ago and nothing else refers to it, so making
    // it an `OwnedFd` (closed exactly once, on drop) is sound.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
