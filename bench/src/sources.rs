//! The local addresses the clients connect from, and the socket each client binds to one of them.
//!
//! A client's TCP connection needs a local port unique to its (source, destination) pair, and
//! Linux hands out ~28k of them (`ip_local_port_range`, 32768–60999) per source address: every
//! worker of `fanout --workers N` listens on one shared port, so 100,000 clients need at least
//! four source addresses. All of 127.0.0.0/8 is the loopback here, so any 127.x.y.z serves
//! without configuration.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpSocket;

/// The most source addresses one flag may name.
const MOST: u32 = 65_536;

/// Where `--source-addresses` lets the clients connect from; client `i` binds to address
/// `i mod len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceAddresses(Vec<Ipv4Addr>);

impl SourceAddresses {
    /// Parses `--source-addresses`: a count `N` (127.0.0.1 … 127.0.0.N, as the flag always
    /// meant), a range `A-B` of IPv4 addresses (both ends included), or a comma-separated list of
    /// ranges and single addresses.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(count) = text.trim().parse::<u32>() {
            if count == 0 || count > MOST {
                return Err(format!("a count of addresses is 1 to {MOST}"));
            }
            return Ok(Self(span(Ipv4Addr::new(127, 0, 0, 1), count)));
        }
        let mut addresses = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let first = address(first)?;
            let last = address(last)?;
            let (from, to) = (u32::from(first), u32::from(last));
            if to < from {
                return Err(format!("{part}: the range ends before it starts"));
            }
            if addresses.len() as u64 + u64::from(to - from) + 1 > u64::from(MOST) {
                return Err(format!("at most {MOST} addresses"));
            }
            addresses.extend(span(first, to - from + 1));
        }
        Ok(Self(addresses))
    }

    /// The address client number `client` connects from.
    pub fn for_client(&self, client: usize) -> Ipv4Addr {
        // Never empty: `parse` makes at least one.
        self.0[client % self.0.len()]
    }
}

impl fmt::Display for SourceAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.first(), self.0.last()) {
            (Some(first), Some(last)) if self.0.len() > 1 => {
                write!(f, "{} addresses, {first} … {last}", self.0.len())
            }
            (Some(only), _) => write!(f, "{only}"),
            _ => Ok(()),
        }
    }
}

fn address(text: &str) -> Result<Ipv4Addr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?}: expected a count, an IPv4 address or a range A-B"))
}

/// `count` consecutive addresses from `first` (which the callers keep within the IPv4 space).
fn span(first: Ipv4Addr, count: u32) -> Vec<Ipv4Addr> {
    let first = u32::from(first);
    (0..count)
        .map(|offset| Ipv4Addr::from(first.saturating_add(offset)))
        .collect()
}

/// A TCP socket bound to `source`, its port left to `connect` (`IP_BIND_ADDRESS_NO_PORT`, on
/// Linux): the port is then only unique per destination, and one held in `TIME_WAIT` by an
/// earlier run can be taken again, where a plain `bind` to port 0 would reserve one for good.
pub fn bound_socket(source: Ipv4Addr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    #[cfg(target_os = "linux")]
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    )?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<Ipv4Addr> {
        SourceAddresses::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .0
    }

    #[test]
    fn a_count_is_127_0_0_1_onwards_as_before() {
        assert_eq!(
            parsed("3"),
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        assert_eq!(parsed("300").last(), Some(&Ipv4Addr::new(127, 0, 1, 44)));
    }

    #[test]
    fn ranges_and_lists_are_read_in_order() {
        let addresses = parsed("127.0.0.2-127.0.0.21");
        assert_eq!(addresses.len(), 20);
        assert_eq!(addresses[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(addresses[19], Ipv4Addr::new(127, 0, 0, 21));
        assert_eq!(
            parsed("127.0.0.9, 127.0.0.255-127.0.1.0"),
            [
                Ipv4Addr::new(127, 0, 0, 9),
                Ipv4Addr::new(127, 0, 0, 255),
                Ipv4Addr::new(127, 0, 1, 0)
            ]
        );
    }

    #[test]
    fn clients_go_round_robin() {
        let sources =
            SourceAddresses::parse("127.0.0.2-127.0.0.3").unwrap_or_else(|e| panic!("{e}"));
        let chosen: Vec<u8> = (0..5).map(|i| sources.for_client(i).octets()[3]).collect();
        assert_eq!(chosen, [2, 3, 2, 3, 2]);
        assert_eq!(sources.to_string(), "2 addresses, 127.0.0.2 … 127.0.0.3");
    }

    #[test]
    fn nonsense_is_refused() {
        for text in [
            "0",
            "127.0.0.5-127.0.0.4",
            "localhost",
            "127.0.0.1-",
            "70000",
            "1.0.0.0-2.0.0.0",
        ] {
            assert!(SourceAddresses::parse(text).is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn a_client_connects_from_the_address_it_was_given() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let target = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let source = Ipv4Addr::new(127, 0, 0, 7);
        let socket = bound_socket(source).unwrap_or_else(|e| panic!("{e}"));
        let (connected, accepted) = tokio::join!(socket.connect(target), listener.accept());
        let stream = connected.unwrap_or_else(|e| panic!("{e}"));
        let (_, peer) = accepted.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer.ip(), source);
        assert_eq!(stream.local_addr().ok(), Some(peer));
    }
}
