//! The relay client.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use log::info;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::{read_frames, HEADER_INSTANCE, HEADER_LOWEST, HEADER_NEXT, MAX_ANSWER_BODY};

/// What went wrong talking to the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The relay could not be reached or the connection broke.
    #[error("relay unreachable: {0}")]
    Transport(String),
    /// The relay refused the request, e.g.
    /// `relay http://…: 503 Service Unavailable: too many long polls (512), try again later`.
    #[error("relay {url}: {status} {}: {}", reason(*.status), message(.body))]
    Http {
        /// The relay's URL.
        url: String,
        /// Status.
        status: u16,
        /// Body, for the operator (the relay sends `{"error": "…"}`).
        body: String,
    },
    /// The answer could not be read.
    #[error("relay answer malformed: {0}")]
    Malformed(String),
}

fn reason(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The relay's `{"error": "…"}`, else the body as it is.
fn message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// Idle connections a client (and its clones) keeps open to the relay for
/// reuse: as many as the relay lets one address hold long polls by default.
const POOLED_CONNECTIONS: usize = 128;

/// How long a host name's addresses are reused before it is looked up
/// again.
const NAME_TTL: Duration = Duration::from_secs(30);

/// Resolves a relay URL whose host is an IP address (`http://127.0.0.1:3000`)
/// in place, and remembers a host name's addresses for [`NAME_TTL`]. ureq's
/// default resolver starts a thread for every request that has a timeout, to
/// time the lookup out, even when a pooled connection is then reused: a
/// thread spawned (and its stack mapped and unmapped) per long poll, which
/// dominated a client's cost. A name is still looked up by ureq's resolver,
/// with its timeout, when not remembered.
#[derive(Debug, Default)]
struct LiteralFirst {
    default: DefaultResolver,
    /// The last name looked up (`host:port`), when, and its addresses.
    cached: Mutex<Option<(String, std::time::Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let port = uri.authority().and_then(|a| {
            a.port_u16().or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
        });
        let (Some(authority), Some(port)) = (uri.authority(), port) else {
            return self.default.resolve(uri, config, timeout);
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = format!("{host}:{port}");
        let now = std::time::Instant::now();
        {
            let cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((k, at, addrs)) = cached.as_ref() {
                if *k == key && now.duration_since(*at) < NAME_TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs = self.default.resolve(uri, config, timeout)?;
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((key, now, addrs.clone()));
        Ok(addrs)
    }
}

/// A batch of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `(seq, bytes)`, in order.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// The sequence number the next message will get.
    pub next: u64,
    /// The lowest sequence number the relay still holds: if it is above the
    /// `after + 1` asked for, messages were missed.
    pub lowest: u64,
    /// The relay restarted (its instance id changed) since this client's
    /// previous answer: the batch was read from the new relay's first
    /// message, not after the cursor asked for, which meant the old relay's
    /// numbering.
    pub restarted: bool,
}

impl Batch {
    /// Returns the sequence number to ask for next (the last one seen).
    ///
    /// After a restart with nothing for this client, that is the new
    /// relay's `next - 1`, not `after` (which counted on the old relay).
    pub fn last_seq(&self, after: u64) -> u64 {
        match self.messages.last() {
            Some((s, _)) => *s,
            None if self.restarted => self.next.saturating_sub(1),
            None => after,
        }
    }
}

/// A relay client.
///
/// It remembers the instance id of the relay that answered its last poll
/// (or `head`); when a poll is answered by another instance, the relay
/// restarted, and [`RelayClient::poll_tags`] re-reads the new relay from its
/// first message. Clones start with the instance their original had seen.
pub struct RelayClient {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
    token: Option<String>,
    instance: Mutex<Option<String>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("instance", &self.instance())
            .finish()
    }
}

impl Clone for RelayClient {
    fn clone(&self) -> Self {
        RelayClient {
            agent: self.agent.clone(),
            url: self.url.clone(),
            timeout: self.timeout,
            token: self.token.clone(),
            instance: Mutex::new(self.instance()),
        }
    }
}

fn transport(url: &str, e: ureq::Error) -> RelayError {
    RelayError::Transport(format!("{url}: {e}"))
}

/// An answer's status, instance header and body.
struct Answer {
    status: u16,
    instance: Option<String>,
    next: Option<u64>,
    lowest: Option<u64>,
    body: Vec<u8>,
}

impl RelayClient {
    /// Creates a client of the relay at `url`; `timeout` bounds every call
    /// beyond the long-poll wait.
    pub fn new(url: &str, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // TCP_NODELAY (ureq's default, said here because it matters): a
            // request written in parts must not wait for a delayed ACK. The
            // relay's side sets it on its listener and every accepted socket.
            .no_delay(true)
            // Below the relay's keep-alive timeout (10 s by default), so a
            // pooled connection is not reused as the relay closes it.
            .max_idle_age(Duration::from_secs(4))
            // Clones share the agent and its pool, and each long poll holds
            // a connection: ureq keeps 3 idle per host by default, so every
            // poll past the third would open a fresh connection.
            .max_idle_connections(POOLED_CONNECTIONS)
            .max_idle_connections_per_host(POOLED_CONNECTIONS)
            .build();
        RelayClient {
            agent: ureq::Agent::with_parts(
                config,
                DefaultConnector::default(),
                LiteralFirst::default(),
            ),
            url: url.trim_end_matches('/').to_owned(),
            timeout,
            token: None,
            instance: Mutex::new(None),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request (for a relay
    /// started with a token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Returns the instance id of the relay that answered the last poll or
    /// `head`, if any.
    pub fn instance(&self) -> Option<String> {
        self.instance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `seen`; returns the previous instance if it differs.
    fn note_instance(&self, seen: Option<&str>) -> Option<String> {
        let seen = seen?;
        let mut known = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        match known.replace(seen.to_owned()) {
            Some(old) if old != seen => Some(old),
            _ => None,
        }
    }

    fn send(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        limit: usize,
    ) -> Result<Answer, RelayError> {
        let req = match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        };
        self.read(req.call(), limit)
    }

    fn read(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: usize,
    ) -> Result<Answer, RelayError> {
        let mut resp = resp.map_err(|e| transport(&self.url, e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let instance = header(HEADER_INSTANCE);
        let next = header(HEADER_NEXT).and_then(|v| v.parse().ok());
        let lowest = header(HEADER_LOWEST).and_then(|v| v.parse().ok());
        let limit = if status == 200 { limit } else { 1 << 16 };
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit as u64)
            .read_to_vec()
            .map_err(|e| transport(&self.url, e))?;
        if status != 200 {
            return Err(RelayError::Http {
                url: self.url.clone(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(Answer {
            status,
            instance,
            next,
            lowest,
            body,
        })
    }

    fn json(&self, answer: &Answer) -> Result<serde_json::Value, RelayError> {
        debug_assert_eq!(answer.status, 200);
        serde_json::from_slice(&answer.body).map_err(|e| {
            RelayError::Malformed(format!(
                "{}: {e}: {}",
                self.url,
                String::from_utf8_lossy(&answer.body)
            ))
        })
    }

    /// Posts a message; returns its sequence number.
    ///
    /// # Errors
    /// Unreachable relay, refusal (size, empty) or a malformed answer.
    pub fn post(&self, bytes: &[u8]) -> Result<u64, RelayError> {
        self.post_tagged(bytes, "")
    }

    /// Posts a message with a routing tag (letters, digits, `-`, `_`), so
    /// that clients polling for other tags are not woken by it.
    ///
    /// # Errors
    /// As [`RelayClient::post`].
    pub fn post_tagged(&self, bytes: &[u8], tag: &str) -> Result<u64, RelayError> {
        let req = self
            .agent
            .post(format!("{}/messages?tag={tag}", self.url))
            .config()
            .timeout_global(Some(self.timeout))
            .build()
            .header("Content-Type", "application/octet-stream");
        let req = match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        };
        // The instance a post sees is not recorded: the cursor of this
        // client's polls must be checked by its polls.
        let answer = self.read(req.send(bytes), 1 << 16)?;
        let v = self.json(&answer)?;
        v.get("seq")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| RelayError::Malformed(format!("{}: no seq in {v}", self.url)))
    }

    /// Returns the messages after `after`, waiting up to `wait` for one.
    ///
    /// # Errors
    /// Unreachable relay or a malformed answer.
    pub fn poll(&self, after: u64, wait: Duration) -> Result<Batch, RelayError> {
        self.poll_tags(after, wait, &[])
    }

    /// Returns the messages after `after` tagged with one of `tags` (every
    /// message when empty), waiting up to `wait` for one.
    ///
    /// If the answer comes from another relay instance than the previous
    /// one, the relay restarted and `after` meant the old numbering: the
    /// messages are read again from the new relay's first one (without
    /// waiting) and the batch says `restarted`. A caller that goes on with
    /// `batch.last_seq(after)` keeps receiving without noticing.
    ///
    /// # Errors
    /// As [`RelayClient::poll`].
    pub fn poll_tags(
        &self,
        after: u64,
        wait: Duration,
        tags: &[&str],
    ) -> Result<Batch, RelayError> {
        let batch = self.poll_once(after, wait, tags)?;
        if let Some(old) = self.note_instance(batch.1.as_deref()) {
            info!(
                "relay {} restarted (instance {old} -> {}): re-reading from its first message",
                self.url,
                batch.1.as_deref().unwrap_or("?")
            );
            let (mut batch, seen) = self.poll_once(0, Duration::ZERO, tags)?;
            // Yet another restart in between is caught by the next poll.
            let _ = self.note_instance(seen.as_deref());
            batch.restarted = true;
            return Ok(batch);
        }
        Ok(batch.0)
    }

    fn poll_once(
        &self,
        after: u64,
        wait: Duration,
        tags: &[&str],
    ) -> Result<(Batch, Option<String>), RelayError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let req = self
            .agent
            .get(format!(
                "{}/messages?after={after}&wait_ms={wait_ms}&tags={}",
                self.url,
                tags.join(",")
            ))
            .config()
            .timeout_global(Some(self.timeout + wait))
            .build();
        let answer = self.send(req, MAX_ANSWER_BODY)?;
        let missing = |name: &str| {
            RelayError::Malformed(format!("{}: missing or bad {name} header", self.url))
        };
        let next = answer.next.ok_or_else(|| missing(HEADER_NEXT))?;
        let lowest = answer.lowest.ok_or_else(|| missing(HEADER_LOWEST))?;
        let messages = read_frames(&answer.body)
            .ok_or_else(|| RelayError::Malformed(format!("{}: truncated batch", self.url)))?;
        Ok((
            Batch {
                messages,
                next,
                lowest,
                restarted: false,
            },
            answer.instance,
        ))
    }

    /// Returns the relay's head: the sequence number the next message will
    /// get. A client that starts now polls after `head() - 1`. Records the
    /// relay's instance, as a poll does.
    ///
    /// # Errors
    /// Unreachable relay or a malformed answer.
    pub fn head(&self) -> Result<u64, RelayError> {
        let req = self
            .agent
            .get(format!("{}/head", self.url))
            .config()
            .timeout_global(Some(self.timeout))
            .build();
        let answer = self.send(req, 1 << 16)?;
        let v = self.json(&answer)?;
        let next = v
            .get("next")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| RelayError::Malformed(format!("{}: no next in {v}", self.url)))?;
        let _ = self.note_instance(answer.instance.as_deref());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str) -> Vec<SocketAddr> {
        let uri: ureq::http::Uri = url.parse().unwrap();
        let config = ureq::config::Config::default();
        let timeout = NextTimeout {
            after: Duration::from_secs(1).into(),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        LiteralFirst::default()
            .resolve(&uri, &config, timeout)
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn ip_literal_urls_resolve_in_place_and_names_are_remembered_briefly() {
        assert_eq!(
            resolve("http://127.0.0.1:3000/messages"),
            vec!["127.0.0.1:3000".parse().unwrap()]
        );
        assert_eq!(
            resolve("http://[::1]:8080/head"),
            vec!["[::1]:8080".parse().unwrap()]
        );
        assert_eq!(
            resolve("http://127.0.0.9/"),
            vec!["127.0.0.9:80".parse().unwrap()],
            "the scheme's default port"
        );
        let local = resolve("http://localhost:3000/");
        assert!(
            !local.is_empty()
                && local
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 3000),
            "{local:?}"
        );
        // A name is remembered for NAME_TTL: a planted answer is returned
        // while fresh, and looked up again once stale.
        let r = LiteralFirst::default();
        let uri: ureq::http::Uri = "http://localhost:3001/".parse().unwrap();
        let config = ureq::config::Config::default();
        let planted: SocketAddr = "127.0.0.42:3001".parse().unwrap();
        let plant = |age: Duration| {
            let mut addrs = r.empty();
            addrs.push(planted);
            let at = std::time::Instant::now().checked_sub(age).unwrap();
            *r.cached.lock().unwrap() = Some(("localhost:3001".into(), at, addrs));
        };
        let lookup = || -> Vec<SocketAddr> {
            r.resolve(&uri, &config, NextTimeout::default())
                .unwrap()
                .iter()
                .copied()
                .collect()
        };
        plant(Duration::ZERO);
        assert_eq!(lookup(), vec![planted], "remembered");
        plant(NAME_TTL + Duration::from_secs(1));
        let fresh = lookup();
        assert!(
            !fresh.contains(&planted) && fresh.iter().all(|a| a.port() == 3001),
            "{fresh:?}"
        );
        assert_eq!(lookup(), fresh, "the new answer is remembered");
    }
}
