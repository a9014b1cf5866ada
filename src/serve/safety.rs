//! The dashboard's safety rules, as pure functions with unit tests: which
//! addresses count as loopback, which `Host` headers a loopback server
//! answers (a page of another site that rebinds its name to 127.0.0.1
//! must not read the dashboard), how a request proves it holds the access
//! token, how a task id taken from a URL is checked before any path is
//! built from it, and the per-start action token.

use std::net::{IpAddr, SocketAddr};

use spoolflow::model::names::TaskId;

/// The shortest `--token` accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The cookie that carries the access token once a browser gave it in
/// the URL (`?token=`).
pub const TOKEN_COOKIE: &str = "spoolflow_token";

/// Whether an address is on the loopback interface.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why a listen address and token cannot be served.
pub fn check_listen(addr: &SocketAddr, token: Option<&str>) -> Result<(), String> {
    match token {
        Some(t) if t.chars().count() < MIN_TOKEN_LEN => Err(format!(
            "--token must be at least {MIN_TOKEN_LEN} characters long"
        )),
        None if !is_loopback(addr) => Err(format!(
            "{addr} is not a loopback address: give --token (or SPOOLFLOW_TOKEN) so that every request must carry it"
        )),
        _ => Ok(()),
    }
}

/// Whether a loopback server answers a request whose `Host` header is
/// `host`: a loopback name or address, with the server's port or none.
/// (A non-loopback server checks the access token instead.)
pub fn host_allowed(host: Option<&str>, port: u16) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 without Host: not a browser of another site.
        return true;
    };
    let (name, p) = split_host(host);
    let port_ok = p.is_none_or(|p| p == port.to_string());
    let name = name.to_ascii_lowercase();
    let name_ok = name == "localhost"
        || name == "[::1]"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    port_ok && name_ok
}

/// `name[:port]`, `[v6][:port]`.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => (&host[..=end], host[end + 1..].strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    }
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(given: &str, want: &str) -> bool {
    let (a, b) = (given.as_bytes(), want.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The access token a request carries: `Authorization: Bearer T`, the
/// cookie, or `?token=T` (the last one says it came in the URL).
pub fn presented_token<'a>(
    authorization: Option<&'a str>,
    cookie: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<(String, bool)> {
    if let Some(t) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Some((t.trim().to_string(), false));
    }
    if let Some(t) = query.and_then(|q| query_value(q, "token")) {
        return Some((t, true));
    }
    cookie.and_then(|c| {
        c.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == TOKEN_COOKIE)
            .map(|(_, v)| (v.to_string(), false))
    })
}

/// The value of `key` in a query string (percent-decoded).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// The address `path?query` without its `token` parameter.
pub fn without_token(path: &str, query: Option<&str>) -> String {
    let rest: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some("token"))
        .collect();
    if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    }
}

/// Decodes `%XX` and `+` (a form's space); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A task id taken from a URL: checked by the model's parser (nothing
/// else is ever joined to a path), with a message a person reads.
pub fn task_id(raw: &str) -> Result<TaskId, String> {
    raw.parse::<TaskId>().map_err(|_| {
        let shown: String = raw
            .chars()
            .take(64)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        format!(
            "{shown:?} is not a task id (letters, digits, '.', '_' and '-', at most 128, starting with a letter or digit)"
        )
    })
}

/// A fresh random token (128 bits, hex) from the kernel's generator.
pub fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_a_token() {
        let lo: SocketAddr = "127.0.0.1:7878".parse().unwrap();
        let lo6: SocketAddr = "[::1]:7878".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7878".parse().unwrap();
        assert!(is_loopback(&lo) && is_loopback(&lo6) && !is_loopback(&any));
        assert!(check_listen(&lo, None).is_ok());
        assert!(check_listen(&any, None).is_err());
        assert!(check_listen(&any, Some("short")).is_err());
        assert!(check_listen(&any, Some("a-long-enough-token")).is_ok());
    }

    #[test]
    fn a_loopback_server_answers_loopback_hosts_only() {
        assert!(host_allowed(Some("127.0.0.1:7878"), 7878));
        assert!(host_allowed(Some("localhost:7878"), 7878));
        assert!(host_allowed(Some("LOCALHOST"), 7878));
        assert!(host_allowed(Some("[::1]:7878"), 7878));
        assert!(host_allowed(None, 7878));
        assert!(!host_allowed(Some("evil.example:7878"), 7878));
        assert!(!host_allowed(Some("127.0.0.1:80"), 7878));
        assert!(!host_allowed(Some("127.0.0.1.evil.example"), 7878));
    }

    #[test]
    fn tokens_come_from_a_header_the_url_or_the_cookie() {
        assert_eq!(
            presented_token(Some("Bearer abc"), None, None),
            Some(("abc".into(), false))
        );
        assert_eq!(
            presented_token(None, None, Some("x=1&token=a%2Bb")),
            Some(("a+b".into(), true))
        );
        assert_eq!(
            presented_token(None, Some("a=1; spoolflow_token=zz"), None),
            Some(("zz".into(), false))
        );
        assert_eq!(presented_token(None, Some("a=1"), Some("b=2")), None);
        assert_eq!(
            without_token("/tasks", Some("token=x&state=failed")),
            "/tasks?state=failed"
        );
        assert_eq!(without_token("/", Some("token=x")), "/");
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("ab", "abc"));
    }

    #[test]
    fn ids_from_urls_are_checked_by_the_model() {
        assert!(task_id("ok-1").is_ok());
        for bad in ["..", "../etc", "a/b", "a\0b", ".hidden", ""] {
            assert!(task_id(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(10 * 1024);
        let e = task_id(&long).unwrap_err();
        assert!(e.len() < 300, "the message is short: {e}");
        assert_eq!(random_token().unwrap().len(), 32);
    }
}
