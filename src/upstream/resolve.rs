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

/// Forward-mode name cache of one core.
#[derive(Default)]
pub(crate) struct Resolver {
    cache: HashMap<String, (SocketAddr, Instant)>,
}

/// Resolves `authority` (`host`, `host:port`, `[v6]:port`; port 80 by default).
///
/// IP literals and cached names cost no allocation; a miss runs `getaddrinfo` on the blocking
/// pool so the worker keeps serving.
///
/// # Errors
/// `InvalidInput` for a malformed authority, `NotFound` when the name has no address.
pub(crate) async fn resolve(
    resolver: &RefCell<Resolver>,
    authority: &str,
) -> io::Result<SocketAddr> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = split_authority(authority)?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(&(addr, at)) = resolver.borrow().cache.get(authority)
        && at.elapsed() < DNS_TTL
    {
        return Ok(addr);
    }
    let name = host.to_owned();
    let looked_up = monoio::spawn_blocking(move || (name.as_str(), port).to_socket_addrs())
        .await
        .map_err(|_| io::Error::other("resolver thread gone"))??
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let mut resolver = resolver.borrow_mut();
    if resolver.cache.len() >= MAX_DNS_ENTRIES {
        resolver.cache.clear();
    }
    resolver
        .cache
        .insert(authority.to_owned(), (looked_up, Instant::now()));
    Ok(looked_up)
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
}
