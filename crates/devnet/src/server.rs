//! The HTTP shell both emulators share: a tiny_http server (TCP_NODELAY) on
//! one thread, the chain state behind a mutex, shut down when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tiny_http::{Request, Server};

/// An emulated node serving its state `S` over HTTP.
pub struct Emulator<S> {
    state: Arc<Mutex<S>>,
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

impl<S: Send + 'static> Emulator<S> {
    /// Serves `state` on `addr` (port 0 for a free one), answering each
    /// request with `handle`.
    pub(crate) fn serve(
        addr: &str,
        state: S,
        handle: fn(Request, &Mutex<S>),
    ) -> std::io::Result<Self> {
        let server = Arc::new(
            Server::from_listener(relay::nodelay_listener(addr)?, None)
                .map_err(std::io::Error::other)?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("no IP address"))?;
        let state = Arc::new(Mutex::new(state));
        let (s, st) = (server.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                handle(req, &st);
            }
        });
        Ok(Emulator {
            state,
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
}

impl<S> Drop for Emulator<S> {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
