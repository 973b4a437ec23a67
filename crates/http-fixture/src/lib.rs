//! Test-only HTTP servers on 127.0.0.1 (a free port) that answer each request
//! as the test's handler says — including as a broken node would: garbage
//! bodies, truncated answers, slow answers, closed connections.
//!
//! One request per connection (answers carry `Connection: close`). The server
//! stops when dropped. Never for production use.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// Returns a header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Returns the body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer.
    Status {
        /// Status code.
        code: u16,
        /// `Content-Type`.
        content_type: &'static str,
        /// Body.
        body: Vec<u8>,
    },
    /// These exact bytes, then close (for truncated or malformed answers).
    Raw(Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
}

impl Reply {
    /// A JSON answer.
    pub fn json(code: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            code,
            content_type: "application/json",
            body: body.into().into_bytes(),
        }
    }

    /// A plain-text answer.
    pub fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            code,
            content_type: "text/plain",
            body: body.into().into_bytes(),
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running fixture server.
pub struct FixtureServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FixtureServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixtureServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FixtureServer {
    /// Starts a server on 127.0.0.1 with a free port.
    ///
    /// # Panics
    /// If no loopback port can be bound (a broken test machine).
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("bound address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let requests = requests2.clone();
                std::thread::spawn(move || serve(conn, &*handler, &requests));
            }
        });
        FixtureServer {
            addr,
            stop,
            requests,
            accept: Some(accept),
        }
    }

    /// Returns `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns how many requests were received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(16 << 20)];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn serve(mut conn: TcpStream, handler: &Handler, requests: &AtomicUsize) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let mut reply = handler(&req);
    loop {
        match reply {
            Reply::Delay(d, next) => {
                std::thread::sleep(d);
                reply = *next;
            }
            Reply::Close => return,
            Reply::Raw(bytes) => {
                let _ = conn.write_all(&bytes);
                return;
            }
            Reply::Status {
                code,
                content_type,
                body,
            } => {
                let head = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
                return;
            }
        }
    }
}
