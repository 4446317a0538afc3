//! The pods' IPs: loopback addresses `127.k.x.y`, with the second octet `k` claimed for the
//! node's lifetime, so that two nodes on one machine (two stacks in one test binary, or two
//! test binaries) never give a pod an address another node's pod is listening on.
//!
//! A node claims `k` by listening on `127.k.0.1:`[`CLAIM_PORT`]; the kernel lets only one
//! process (one socket) hold it, and frees it when the node's process ends, however it
//! ends. Pods get `127.k.x.y` with `y` from 2, so no pod takes a claim's address, and
//! `127.0.…` stays the stack's own (the broker, the apiserver).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Result};

/// The port whose listener on `127.k.0.1` claims the octet `k`.
pub const CLAIM_PORT: u16 = 47_989;

/// How many addresses one octet holds: `127.k.0..250.2..252`.
const PER_OCTET: u32 = 250 * 250;

/// The addresses of one node's pods.
#[derive(Debug)]
pub struct PodAddresses {
    octet: u8,
    next: AtomicU32,
    _claim: TcpListener,
}

impl PodAddresses {
    /// Claims a free second octet, trying from one picked by the process id (so that nodes
    /// of different processes seldom race for the same one).
    pub fn claim() -> Result<Self> {
        let first = std::process::id() % 254;
        for i in 0..254 {
            let octet = u8::try_from((first + i) % 254 + 1).unwrap_or(1);
            let addr = SocketAddrV4::new(Ipv4Addr::new(127, octet, 0, 1), CLAIM_PORT);
            match TcpListener::bind(addr) {
                Ok(claim) => {
                    return Ok(Self {
                        octet,
                        next: AtomicU32::new(0),
                        _claim: claim,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(Error::io(format!("claiming pod addresses at {addr}"), e)),
            }
        }
        Err(Error::io(
            "claiming pod addresses",
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "every 127.k.0.0/16 range is held by another local node",
            ),
        ))
    }

    /// The next pod's IP.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % PER_OCTET;
        format!("127.{}.{}.{}", self.octet, n / 250, n % 250 + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_never_share_pod_addresses() {
        let a = PodAddresses::claim().expect("claims");
        let b = PodAddresses::claim().expect("claims another");
        assert_ne!(a.octet, b.octet);
        let (first, second) = (a.next(), a.next());
        assert_ne!(first, second);
        assert!(first.starts_with(&format!("127.{}.0.", a.octet)), "{first}");
        assert!(!b.next().starts_with(&format!("127.{}.", a.octet)));
        // A claim ends with its node: the octet can be claimed again.
        let octet = a.octet;
        drop(a);
        let addr = SocketAddrV4::new(Ipv4Addr::new(127, octet, 0, 1), CLAIM_PORT);
        assert!(TcpListener::bind(addr).is_ok());
    }
}
