//! Socket construction for the data path: listeners and upstream connections created inside a
//! workload's network namespace, marked so the in-pod redirect rules let them through, and
//! (optionally) transparent so connections to the app keep the client's source address.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::netns::Netns;

/// How ztunnel's own sockets are marked.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    /// SO_MARK on every socket ztunnel opens inside a pod namespace (0x539 by default).
    pub mark: u32,
    /// Set IP_TRANSPARENT so a connection can use a non-local source address.
    pub transparent: bool,
}

/// Binds a listener inside `netns`. Listeners are IP_TRANSPARENT so TPROXY-delivered
/// connections are accepted too.
pub fn bind_listener(
    netns: &Netns,
    addr: SocketAddr,
    opts: SocketOptions,
) -> io::Result<TcpListener> {
    let std_listener = netns.run(|| {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            // One listener per family keeps SO_ORIGINAL_DST unambiguous.
            socket.set_only_v6(true)?;
        }
        if opts.transparent {
            set_transparent(&socket, addr.is_ipv6())?;
        }
        socket.set_mark(opts.mark)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(std::net::TcpListener::from(socket))
    })?;
    TcpListener::from_std(std_listener)
}

/// Connects to `dst` from inside `netns`, with ztunnel's mark, optionally from `src` (a
/// non-local address when transparent).
pub async fn connect(
    netns: &Netns,
    dst: SocketAddr,
    src: Option<IpAddr>,
    opts: SocketOptions,
) -> io::Result<TcpStream> {
    let socket = netns.run(|| {
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let sref = SockRef::from(&socket);
        sref.set_mark(opts.mark)?;
        if let Some(src) = src {
            if opts.transparent {
                set_transparent(&sref, dst.is_ipv6())?;
            }
            socket.bind(SocketAddr::new(src, 0))?;
        }
        Ok(socket)
    })?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(dst))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {dst} timed out after {CONNECT_TIMEOUT:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Bound on a TCP connect, so an unreachable peer fails a connection in seconds, not the
/// kernel's minutes of SYN retries.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn set_transparent(socket: &Socket, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        set_ipv6_transparent(socket)
    } else {
        socket.set_ip_transparent(true)
    }
}

/// socket2 and nix only expose the IPv4 option; IPV6_TRANSPARENT is the same flag one level up.
#[allow(unsafe_code)]
fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket borrowed for the call; the option value points to a
    // c_int on the stack whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The destination the client originally asked for: SO_ORIGINAL_DST for REDIRECTed
/// connections, else the local address (TPROXY delivers with the original destination as the
/// socket's own address).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sref = SockRef::from(stream);
    let orig = if local.is_ipv4() {
        sref.original_dst()
    } else {
        sref.original_dst_ipv6()
    };
    match orig.ok().and_then(|a| a.as_socket()) {
        Some(addr) => Ok(canonical(addr)),
        None => Ok(canonical(local)),
    }
}

/// Maps IPv4-mapped IPv6 addresses back to IPv4 so lookups by IP find the workload.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}
