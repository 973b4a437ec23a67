//! The HTTP shell both emulators share: a tiny_http server (TCP_NODELAY) on
//! one thread, the chain state behind a mutex, shut down when dropped. A test
//! can switch the shell to misbehave ([`Fault`]) like a broken node or proxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Request, Response, Server};

/// How an emulator misbehaves while a fault is set: every request gets this
/// answer instead of the real one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `200 OK` with a body that is not JSON at all.
    Garbage,
    /// `500 Internal Server Error`.
    ServerError,
    /// No answer for this long (longer than the client waits), then a 503.
    Hang(Duration),
    /// A JSON answer cut off half-way (its `Content-Length` says so).
    Truncated,
}

/// An emulated node serving its state `S` over HTTP.
pub struct Emulator<S> {
    state: Arc<Mutex<S>>,
    fault: Arc<Mutex<Option<Fault>>>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl<S> std::fmt::Debug for Emulator<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Locks the state; a handler that panicked left it consistent enough for a
/// test double (every change is made under the lock in one piece).
pub(crate) fn lock<S>(s: &Mutex<S>) -> MutexGuard<'_, S> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn misbehave(req: Request, fault: Fault) {
    let text =
        |code: u16, body: &str| Response::from_string(body.to_owned()).with_status_code(code);
    match fault {
        Fault::Garbage => {
            let _ = req.respond(text(200, "\u{1}<html>GARBAGE]]}{\u{0}"));
        }
        Fault::ServerError => {
            let _ = req.respond(text(500, "Internal Server Error"));
        }
        Fault::Hang(d) => {
            // Held on its own thread so the server can shut down meanwhile.
            std::thread::spawn(move || {
                std::thread::sleep(d);
                let _ = req.respond(text(503, "Service Unavailable"));
            });
        }
        Fault::Truncated => {
            let json =
                Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("ASCII");
            let _ = req.respond(
                text(200, r#"{"result":{"height":12,"hash":"00000000a3f"#).with_header(json),
            );
        }
    }
}

impl<S: Send + 'static> Emulator<S> {
    /// Serves `state` on `addr` (port 0 for a free one), answering each
    /// request with `handle`, on threads named `name` (at most 15 bytes, as
    /// Linux keeps them).
    pub(crate) fn serve(
        name: &'static str,
        addr: &str,
        state: S,
        handle: fn(Request, &Mutex<S>),
    ) -> std::io::Result<Self> {
        let listener = relay::nodelay_listener(addr)?;
        // tiny_http starts its accept thread, which starts the workers: made
        // from a thread named `name`, they all carry that name (Linux gives a
        // new thread its creator's), so `top -H` or `perf report --sort comm`
        // tells the emulator's CPU from the peg's.
        let server = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || Server::from_listener(listener, None).map_err(std::io::Error::other))?
            .join()
            .map_err(|_| std::io::Error::other("the HTTP server's start panicked"))??;
        let server = Arc::new(server);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("no IP address"))?;
        let state = Arc::new(Mutex::new(state));
        let fault = Arc::new(Mutex::new(None));
        let (s, st, f) = (server.clone(), state.clone(), fault.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for req in s.incoming_requests() {
                    let now = *lock(&f);
                    match now {
                        Some(fault) => misbehave(req, fault),
                        None => handle(req, &st),
                    }
                }
            })?;
        Ok(Emulator {
            state,
            fault,
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// Returns `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `f` on the chain state.
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Makes every answer misbehave as `fault` says, or (`None`) answer
    /// properly again.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *lock(&self.fault) = fault;
    }

    /// The state, shared with a thread that changes it (a miner).
    pub(crate) fn shared(&self) -> Arc<Mutex<S>> {
        self.state.clone()
    }
}

impl<S> Drop for Emulator<S> {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
