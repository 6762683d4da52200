//! Just enough HTTP/1.1 for the page: one GET (or HEAD) request per
//! connection, its path, query parameters and `authorization` header; one
//! response with a length, then the connection closes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest request head read; a longer one is refused.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses a request head (up to the blank line).
    pub fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_owned();
        let target = first.next()?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut request = Request {
            method,
            path: decode(path),
            query: query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
            authorization: None,
        };
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("authorization") {
                    request.authorization = Some(value.trim().to_owned());
                }
            }
        }
        Some(request)
    }
}

/// Percent-decoding, with `+` as a space (form encoding).
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::new(
            status,
            "application/json",
            serde_json::json!({ "error": message }).to_string(),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Reads one request head from `conn`; `None` when the peer went away,
/// was too slow, or sent something else than HTTP.
pub async fn read_request(conn: &mut TcpStream) -> Result<Option<Request>, Response> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(Response::error(431, "the request head is too large"));
        }
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return Ok(None),
        }
    }
    Ok(std::str::from_utf8(&head).ok().and_then(Request::parse))
}

/// Writes `response` (without a body for HEAD) and closes.
pub async fn write_response(conn: &mut TcpStream, response: &Response, head_only: bool) {
    let header = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let _ = conn.write_all(header.as_bytes()).await;
    if !head_only {
        let _ = conn.write_all(&response.body).await;
    }
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_decoded_parameters_and_the_token() {
        let r = Request::parse(
            "GET /api/report?namespace=my%20ns&countries=DE%2CGB&sort=change&empty= HTTP/1.1\r\n\
             Host: x\r\nAuthorization: Bearer abc\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/report");
        assert_eq!(r.param("namespace"), Some("my ns"));
        assert_eq!(r.param("countries"), Some("DE,GB"));
        assert_eq!(r.param("empty"), Some(""));
        assert_eq!(r.param("missing"), None);
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(decode("a+b%zz%4"), "a b%zz%4");
    }
}
