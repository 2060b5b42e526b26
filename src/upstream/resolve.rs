//! Forward-mode name resolution: IP literals parsed in place, names cached per core, misses
//! resolved on the blocking pool so the worker keeps serving.
//!
//! It does not connect: `connect` beside it does.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    time::{Duration, Instant},
};

/// How long a resolved name is trusted (no TTL comes back from `getaddrinfo`).
const DNS_TTL: Duration = Duration::from_secs(60);

/// Names cached per core before the cache is emptied (bounds memory under hostile input).
const MAX_DNS_ENTRIES: usize = 4096;

/// Room for a cache key on the stack: a DNS name (at most 253 bytes), IPv6 brackets, a colon
/// and a port. A longer authority (no valid name is) is used as given.
const MAX_KEY_BYTES: usize = 264;

/// One name's addresses as last resolved.
struct Entry {
    addrs: Vec<SocketAddr>,
    /// When they were resolved (or, after a failed refresh, last tried).
    at: Instant,
    /// The address the next new request starts with (round-robin).
    next: usize,
    /// A refresh failed and was reported; cleared by the next success.
    failing: bool,
}

/// The name cache of one core: forward-mode authorities and the reverse-mode upstream, each
/// with all its addresses, re-resolved after [`DNS_TTL`].
#[derive(Default)]
pub(crate) struct Resolver {
    cache: HashMap<String, Entry>,
}

/// The address chosen for one request, and where it sits among its name's addresses (so the
/// next one can be tried when it refuses). `Copy`: picking allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    /// The address to connect to.
    pub(crate) addr: SocketAddr,
    index: usize,
}

impl Pick {
    /// A fixed address (an IP literal, a MITM destination): it has no other to fail over to.
    pub(crate) fn literal(addr: SocketAddr) -> Pick {
        Pick { addr, index: 0 }
    }
}

impl Resolver {
    /// Caches the addresses the main thread resolved at startup, so the first requests need no
    /// lookup.
    pub(crate) fn seed(&mut self, authority: &str, addrs: &[SocketAddr]) {
        if !addrs.is_empty() {
            self.store(authority, addrs.to_vec(), Instant::now());
        }
    }

    /// The address after `pick` among `authority`'s (its port `default_port` when it names
    /// none, as for [`resolve`]), unless every one was `tried` already.
    pub(crate) fn next_after(
        &self,
        authority: &str,
        default_port: u16,
        pick: Pick,
        tried: usize,
    ) -> Option<Pick> {
        let mut key = [0; MAX_KEY_BYTES];
        let entry = self
            .cache
            .get(with_port(authority, default_port, &mut key))?;
        if tried >= entry.addrs.len() {
            return None;
        }
        let index = (pick.index + 1) % entry.addrs.len();
        Some(Pick {
            addr: entry.addrs[index],
            index,
        })
    }

    /// How many addresses `authority` has (1 for a literal or an unknown name): how many
    /// connects a request may try.
    pub(crate) fn addresses(&self, authority: &str, default_port: u16) -> usize {
        let mut key = [0; MAX_KEY_BYTES];
        self.cache
            .get(with_port(authority, default_port, &mut key))
            .map_or(1, |entry| entry.addrs.len().max(1))
    }

    /// A cached, still fresh name's next address (round-robin spreads new connections).
    fn pick_fresh(&mut self, authority: &str, now: Instant) -> Option<Pick> {
        let entry = self.cache.get_mut(authority)?;
        if now.saturating_duration_since(entry.at) >= DNS_TTL {
            return None;
        }
        Some(entry.pick())
    }

    /// Marks an expired name as being refreshed: it counts as fresh until the lookup returns.
    fn begin_refresh(&mut self, authority: &str, now: Instant) {
        if let Some(entry) = self.cache.get_mut(authority) {
            entry.at = now;
        }
    }

    /// Any cached name's next address, fresh or not.
    fn pick_any(&mut self, authority: &str) -> Option<Pick> {
        self.cache.get_mut(authority).map(Entry::pick)
    }

    fn store(&mut self, authority: &str, addrs: Vec<SocketAddr>, now: Instant) {
        if self.cache.len() >= MAX_DNS_ENTRIES && !self.cache.contains_key(authority) {
            self.cache.clear();
        }
        let entry = self.cache.entry(authority.to_owned()).or_insert(Entry {
            addrs: Vec::new(),
            at: now,
            next: 0,
            failing: false,
        });
        if entry.failing {
            eprintln!("phantom-fast: {authority} resolves again");
        }
        entry.addrs = addrs;
        entry.at = now;
        entry.failing = false;
    }

    /// A refresh failed: the last good addresses stay in use (said once on stderr) and the
    /// next refresh waits another TTL. `None` when there are none.
    fn keep_stale(&mut self, authority: &str, why: &io::Error, now: Instant) -> Option<Pick> {
        let entry = self.cache.get_mut(authority)?;
        if !entry.failing {
            eprintln!(
                "phantom-fast: {authority} no longer resolves ({why}); keeping its last {} address(es)",
                entry.addrs.len()
            );
            entry.failing = true;
        }
        entry.at = now;
        Some(entry.pick())
    }
}

impl Entry {
    fn pick(&mut self) -> Pick {
        let index = self.next % self.addrs.len();
        self.next = index + 1;
        Pick {
            addr: self.addrs[index],
            index,
        }
    }
}

/// Resolves `authority` (`host`, `host:port`, `[v6]:port`; `default_port` when it names none:
/// 80 for `http`, 443 for `https`) and picks one of its addresses, in turn. `host` and
/// `host:443` over https are one name, cached once ([`Resolver::next_after`] finds it).
///
/// IP literals and cached names cost no allocation; a miss or an expired name runs
/// `getaddrinfo` on the blocking pool so the worker keeps serving. A name that stops resolving
/// keeps its last good addresses.
///
/// # Errors
/// `InvalidInput` for a malformed authority, `NotFound` when the name has no address (and
/// never had one).
pub(crate) async fn resolve(
    resolver: &RefCell<Resolver>,
    authority: &str,
    default_port: u16,
) -> io::Result<Pick> {
    let mut key = [0; MAX_KEY_BYTES];
    let authority = with_port(authority, default_port, &mut key);
    let literal = Pick::literal;
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(literal(addr));
    }
    let (host, port) = split_authority(authority)?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(literal(SocketAddr::new(ip, port)));
    }
    {
        let mut resolver = resolver.borrow_mut();
        let now = Instant::now();
        if let Some(pick) = resolver.pick_fresh(authority, now) {
            return Ok(pick);
        }
        // This request refreshes the name; the ones behind it keep the last addresses meanwhile.
        resolver.begin_refresh(authority, now);
    }
    let name = host.to_owned();
    let looked_up = monoio::spawn_blocking(move || {
        let addrs: Vec<SocketAddr> = (name.as_str(), port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
        }
        Ok(addrs)
    })
    .await
    .map_err(|_| io::Error::other("resolver thread gone"))
    .and_then(|found| found);
    let mut resolver = resolver.borrow_mut();
    match looked_up {
        Ok(addrs) => {
            resolver.store(authority, addrs, Instant::now());
            let none = || io::Error::new(io::ErrorKind::NotFound, "no address");
            resolver.pick_any(authority).ok_or_else(none)
        }
        Err(e) => resolver.keep_stale(authority, &e, Instant::now()).ok_or(e),
    }
}

/// `authority` with its port: as given when it names one, else `host:default_port` written into
/// `buf` (no allocation). The name cache's key.
fn with_port<'a>(
    authority: &'a str,
    default_port: u16,
    buf: &'a mut [u8; MAX_KEY_BYTES],
) -> &'a str {
    use std::io::Write;
    let has_port = authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'));
    if has_port || authority.is_empty() {
        return authority;
    }
    let mut rest = &mut buf[..];
    if write!(rest, "{authority}:{default_port}").is_err() {
        return authority;
    }
    let len = MAX_KEY_BYTES - rest.len();
    std::str::from_utf8(&buf[..len]).unwrap_or(authority)
}

/// `host:port` → (host, port); a missing port is 80 (RFC 9110 §4.2.1).
fn split_authority(authority: &str) -> io::Result<(&str, u16)> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "invalid authority");
    if authority.is_empty() {
        return Err(invalid());
    }
    let port_sep = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    match port_sep {
        Some(i) => {
            let port = authority[i + 1..].parse().map_err(|_| invalid())?;
            Ok((&authority[..i], port))
        }
        None => Ok((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (&'static str, &'static str, Option<(&'static str, u16)>);

    #[test]
    fn split_authority_rows() {
        let rows: &[Row] = &[
            (
                "host_and_port",
                "example.com:8080",
                Some(("example.com", 8080)),
            ),
            ("default_port", "example.com", Some(("example.com", 80))),
            ("v6_with_port", "[::1]:81", Some(("[::1]", 81))),
            ("v6_default_port", "[::1]", Some(("[::1]", 80))),
            ("bad_port_rejected", "example.com:http", None),
            ("port_overflow_rejected", "example.com:70000", None),
            ("empty_rejected", "", None),
        ];
        for (name, input, want) in rows {
            assert_eq!(split_authority(input).ok(), *want, "{name}");
        }
    }

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports
            .iter()
            .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    #[test]
    fn resolver_fresh_name_round_robins_over_its_addresses() {
        let mut r = Resolver::default();
        r.seed("up.test:80", &addrs(&[1, 2, 3]));
        let now = Instant::now();
        let got: Vec<u16> = (0..4)
            .map(|_| r.pick_fresh("up.test:80", now).unwrap().addr.port())
            .collect();
        assert_eq!(got, [1, 2, 3, 1]);
    }

    #[test]
    fn resolver_next_after_tries_each_address_once() {
        let mut r = Resolver::default();
        r.seed("up.test:80", &addrs(&[1, 2, 3]));
        let first = r.pick_fresh("up.test:80", Instant::now()).unwrap();
        let second = r.next_after("up.test:80", 80, first, 1).unwrap();
        let third = r.next_after("up.test:80", 80, second, 2).unwrap();
        assert_eq!(
            [first.addr.port(), second.addr.port(), third.addr.port()],
            [1, 2, 3]
        );
        assert_eq!(r.next_after("up.test:80", 80, third, 3), None, "all tried");
        assert_eq!(
            r.next_after("other.test:80", 80, first, 1),
            None,
            "unknown name"
        );
    }

    #[test]
    fn resolver_name_without_port_is_the_name_with_the_default_port() {
        let mut r = Resolver::default();
        // `https://up.test/…` resolves as `up.test:443`; its failover must find that entry.
        r.seed("up.test:443", &addrs(&[1, 2]));
        let first = r.pick_fresh("up.test:443", Instant::now()).unwrap();
        let second = r.next_after("up.test", 443, first, 1).unwrap();
        assert_eq!(second.addr.port(), 2);
        assert_eq!(r.addresses("up.test", 443), 2);
        assert_eq!(r.addresses("up.test", 80), 1, "another port, another name");
        assert_eq!(r.next_after("up.test", 80, first, 1), None);
    }

    #[test]
    fn with_port_rows() {
        let rows: &[(&str, &str, u16, &str)] = &[
            ("port_kept", "example.com:8080", 443, "example.com:8080"),
            ("default_added", "example.com", 443, "example.com:443"),
            ("v6_port_kept", "[::1]:81", 443, "[::1]:81"),
            ("v6_default_added", "[::1]", 80, "[::1]:80"),
            ("empty_as_is", "", 80, ""),
        ];
        for (name, input, port, want) in rows {
            let mut buf = [0; MAX_KEY_BYTES];
            assert_eq!(with_port(input, *port, &mut buf), *want, "{name}");
        }
        let long = "a".repeat(MAX_KEY_BYTES);
        let mut buf = [0; MAX_KEY_BYTES];
        assert_eq!(with_port(&long, 80, &mut buf), long, "too long: as given");
    }

    #[test]
    fn resolver_expired_name_needs_a_lookup_and_a_failed_one_keeps_the_last_addresses() {
        let mut r = Resolver::default();
        r.seed("up.test:80", &addrs(&[1, 2]));
        let later = Instant::now() + DNS_TTL;
        assert_eq!(r.pick_fresh("up.test:80", later), None, "expired");

        let gone = io::Error::new(io::ErrorKind::NotFound, "no address");
        let kept = r.keep_stale("up.test:80", &gone, later).unwrap();
        assert!([1, 2].contains(&kept.addr.port()));
        assert!(
            r.pick_fresh("up.test:80", later).is_some(),
            "fresh for another TTL"
        );
        assert_eq!(r.keep_stale("never.test:80", &gone, later), None);
    }

    #[test]
    fn resolver_new_addresses_replace_the_old_ones() {
        let mut r = Resolver::default();
        r.seed("up.test:80", &addrs(&[1, 2]));
        let now = Instant::now();
        r.store("up.test:80", addrs(&[7]), now);
        assert_eq!(r.pick_fresh("up.test:80", now).unwrap().addr.port(), 7);
        assert_eq!(r.pick_fresh("up.test:80", now).unwrap().addr.port(), 7);
    }
}
