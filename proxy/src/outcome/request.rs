//! The record per request, ready for the HTTP-aware mode (which does not exist yet): what
//! it will fill for each request beside its connection's [`super::Outcome`], and the path
//! normalization the policy's path conditions will be matched against. Nothing here reads
//! a request: the HTTP mode parses, this only records.

/// Longest normalized path a [`RequestRecord`] keeps (bytes; cut at a character boundary).
pub const MAX_PATH_LEN: usize = 256;

/// An HTTP request method, from a bounded set (anything else is `Other`), so it can label
/// a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110): `get` is `Other`.
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            "CONNECT" => Method::Connect,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other => "other",
        }
    }
}

/// The record of one request on an HTTP-aware listener, beside its connection's
/// [`super::Outcome`]: filled by the HTTP mode (not built yet) as the request is decided and
/// answered. The event it will produce, `request`, carries the connection's `direction`,
/// `src_id`, `dst_id`, and:
///
/// | field | ECS | from |
/// |---|---|---|
/// | `http_method` | `http.request.method` | [`Method::as_str`] (bounded) |
/// | `url_path` | `url.path` | [`normalize_path`] of the target: no query, at most [`MAX_PATH_LEN`] bytes |
/// | `http_status` | `http.response.status_code` | the status sent back (403 for a denied request) |
/// | `decision`, `rule` | `event.outcome`, `rule.name` | the per-request policy decision and its rule |
///
/// Metrics will label method and status only; the path never becomes a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    /// Normalized, without the query: what the policy's path conditions are matched against.
    pub path: String,
    /// `None` until a response is sent.
    pub status: Option<u16>,
    /// The rule that decided the request.
    pub rule: Option<String>,
}

impl RequestRecord {
    /// A request for `target` (an origin-form request target, query included) by `method`.
    pub fn new(method: &str, target: &str) -> Self {
        Self { method: Method::parse(method), path: normalize_path(target), status: None, rule: None }
    }
}

/// The path of a request target as the policy sees it: the query and fragment dropped,
/// percent-encoded unreserved characters decoded (so `%2e%2e` is `..`), empty and `.`
/// segments removed, `..` removing the segment before it (never above the root), always
/// starting with `/`, and at most [`MAX_PATH_LEN`] bytes. `//a/./b/../c?x` is `/a/c`.
pub fn normalize_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len().min(MAX_PATH_LEN) + 1);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
        if out.len() >= MAX_PATH_LEN {
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if out.len() > MAX_PATH_LEN {
        let mut cut = MAX_PATH_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3: letters, digits,
/// `-._~`); every other escape, `%2F` included, stays as it is, in upper case.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = char::from((h * 16 + l) as u8);
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push_str(&format!("{:02X}", h * 16 + l));
                }
                i += 3;
                continue;
            }
        }
        // Copy up to the next '%' as text (keeps multi-byte characters whole).
        let next = bytes[i + 1..].iter().position(|&b| b == b'%').map_or(bytes.len(), |n| i + 1 + n);
        out.push_str(&path[i..next]);
        i = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_as_the_policy_matches_them() {
        for (target, want) in [
            ("//a/./b/../c?x", "/a/c"),
            ("/", "/"),
            ("", "/"),
            ("?q=1", "/"),
            ("/charge", "/charge"),
            ("/charge/", "/charge"),
            ("/a/b/../../../..", "/"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E./admin#frag", "/admin"),
            ("/a%2fb/c", "/a%2Fb/c"),
            ("/%7euser", "/~user"),
            ("/caf\u{e9}/%", "/caf\u{e9}/%"),
            ("/x%4", "/x%4"),
        ] {
            assert_eq!(normalize_path(target), want, "{target:?}");
        }
    }

    #[test]
    fn a_path_is_bounded_at_a_character_boundary() {
        let long = format!("/{}", "\u{e9}".repeat(1000));
        let p = normalize_path(&long);
        assert!(p.len() <= MAX_PATH_LEN && p.len() >= MAX_PATH_LEN - 1, "{}", p.len());
        assert!(p.starts_with("/\u{e9}"));
        let many = "/a".repeat(10_000);
        assert_eq!(normalize_path(&many).len(), MAX_PATH_LEN);
    }

    #[test]
    fn a_request_record_has_a_bounded_method_and_a_normalized_path() {
        let r = RequestRecord::new("POST", "/orders/./new?id=7");
        assert_eq!((r.method, r.path.as_str(), r.status, r.rule), (Method::Post, "/orders/new", None, None));
        assert_eq!(RequestRecord::new("get", "/").method.as_str(), "other", "methods are case-sensitive");
        assert_eq!(Method::parse("DELETE").as_str(), "DELETE");
    }
}
