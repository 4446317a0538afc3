//! Listen addresses as the pods Weir deploys spell them.
//!
//! Kubernetes expands `$(POD_IP):8080` to `10.0.0.7:8080` or, in an IPv6 cluster, to
//! `fd00::7:8080`, which is not a valid socket address (an IPv6 one needs brackets). Both
//! the operator and the worker read their `WEIR_HTTP_ADDR` with [`listen_addr`].

use std::net::{IpAddr, SocketAddr};

/// Reads `host:port`, where host is an IPv4 address, a bracketed IPv6 address, or an
/// unbracketed IPv6 address (the port is what follows the last colon).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{s:?} is not host:port with an IP address as host"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has no valid port after its last ':'"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_of_either_family_make_listen_addresses() {
        assert_eq!(
            listen_addr("10.0.0.7:8080").unwrap(),
            "10.0.0.7:8080".parse().unwrap()
        );
        assert_eq!(
            listen_addr("fd00::7:8080").unwrap(),
            "[fd00::7]:8080".parse().unwrap()
        );
        assert_eq!(
            listen_addr("[::1]:9090").unwrap(),
            "[::1]:9090".parse().unwrap()
        );
        assert!(listen_addr("localhost:80").is_err());
        assert!(listen_addr("10.0.0.7").is_err());
        assert!(listen_addr("10.0.0.7:http").is_err());
    }
}
