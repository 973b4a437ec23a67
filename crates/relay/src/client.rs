//! The relay client.

use std::time::Duration;

use crate::{read_frames, HEADER_LOWEST, HEADER_NEXT};

/// The most a batch answer may hold.
const MAX_BATCH_BODY: u64 = 256 << 20;

/// What went wrong talking to the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The relay could not be reached or the connection broke.
    #[error("relay unreachable: {0}")]
    Transport(String),
    /// The relay refused the request.
    #[error("relay answered http {status}: {body}")]
    Http {
        /// Status.
        status: u16,
        /// Body, for the operator.
        body: String,
    },
    /// The answer could not be read.
    #[error("relay answer malformed: {0}")]
    Malformed(String),
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
}

impl Batch {
    /// Returns the sequence number to ask for next (the last one seen).
    pub fn last_seq(&self, after: u64) -> u64 {
        self.messages.last().map_or(after, |(s, _)| *s)
    }
}

/// A relay client.
#[derive(Debug, Clone)]
pub struct RelayClient {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
}

fn transport(e: ureq::Error) -> RelayError {
    RelayError::Transport(e.to_string())
}

impl RelayClient {
    /// Creates a client of the relay at `url`; `timeout` bounds every call
    /// beyond the long-poll wait.
    pub fn new(url: &str, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build();
        RelayClient {
            agent: ureq::Agent::new_with_config(config),
            url: url.trim_end_matches('/').to_owned(),
            timeout,
        }
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
        let mut resp = self
            .agent
            .post(format!("{}/messages?tag={tag}", self.url))
            .config()
            .timeout_global(Some(self.timeout))
            .build()
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 16)
            .read_to_string()
            .map_err(transport)?;
        if status != 200 {
            return Err(RelayError::Http { status, body });
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| RelayError::Malformed(e.to_string()))?;
        v.get("seq")
            .and_then(serde_json::Value::as_u64)
            .ok_or(RelayError::Malformed(body))
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
    /// # Errors
    /// As [`RelayClient::poll`].
    pub fn poll_tags(
        &self,
        after: u64,
        wait: Duration,
        tags: &[&str],
    ) -> Result<Batch, RelayError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let mut resp = self
            .agent
            .get(format!(
                "{}/messages?after={after}&wait_ms={wait_ms}&tags={}",
                self.url,
                tags.join(",")
            ))
            .config()
            .timeout_global(Some(self.timeout + wait))
            .build()
            .call()
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| RelayError::Malformed(format!("missing or bad {name} header")))
        };
        if status != 200 {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(RelayError::Http { status, body });
        }
        let next = header(HEADER_NEXT)?;
        let lowest = header(HEADER_LOWEST)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BATCH_BODY)
            .read_to_vec()
            .map_err(transport)?;
        let messages =
            read_frames(&body).ok_or_else(|| RelayError::Malformed("truncated batch".into()))?;
        Ok(Batch {
            messages,
            next,
            lowest,
        })
    }

    /// Returns the relay's head: the sequence number the next message will
    /// get. A client that starts now polls after `head() - 1`.
    ///
    /// # Errors
    /// Unreachable relay or a malformed answer.
    pub fn head(&self) -> Result<u64, RelayError> {
        let mut resp = self
            .agent
            .get(format!("{}/head", self.url))
            .config()
            .timeout_global(Some(self.timeout))
            .build()
            .call()
            .map_err(transport)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 16)
            .read_to_string()
            .map_err(transport)?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| RelayError::Malformed(e.to_string()))?;
        v.get("next")
            .and_then(serde_json::Value::as_u64)
            .ok_or(RelayError::Malformed(body))
    }
}
