//! The relay between the coordinator and the signers.
//!
//! The relay is an append-only message log over HTTP. Clients `POST` a
//! message and get its sequence number; clients `GET` every message after a
//! sequence number as one batch, waiting (long polling) until there is at
//! least one, so a message reaches every waiting client at once.
//!
//! The relay is untrusted by design: it never looks inside messages, neither
//! signs nor verifies. Security rests on the signed envelope around every
//! packet and the signers' per-round rules (`docs/SECURITY.md`), not on the
//! relay. Memory is bounded: messages are dropped oldest first past a count,
//! a byte total or an age; an answer holds at most a count and a byte budget
//! of messages, sharing their bytes with the log; connections, long polls and
//! slow clients are bounded in number and time. Every answer reports the
//! lowest sequence still held, so a client that fell behind knows it missed
//! some, and the relay's random instance id, so a client notices a restart
//! (sequence numbers start again at 1) and re-reads the new relay from its
//! first message.
//!
//! The protocol is documented in `docs/relay-protocol.md`.

#![warn(clippy::indexing_slicing)]

mod client;
mod server;

pub use client::{Batch, RelayClient, RelayError};
pub use server::{nodelay_listener, RelayConfig, RelayServer};

/// Response header: the sequence number the next message will get.
pub const HEADER_NEXT: &str = "X-Relay-Next";
/// Response header: the lowest sequence number still held.
pub const HEADER_LOWEST: &str = "X-Relay-Lowest";

/// Response header: the relay's instance id, 32 hex digits chosen at random
/// when it starts; a different one means the relay restarted and numbers
/// messages from 1 again.
pub const HEADER_INSTANCE: &str = "X-Relay-Instance";

/// The largest answer body a client accepts (the server's answer byte
/// budget is at most this, less one frame header).
pub const MAX_ANSWER_BODY: usize = 16 << 20;

/// The 12-byte header of a frame: `seq u64 BE ‖ len u32 BE`.
fn frame_head(seq: u64, len: usize) -> [u8; 12] {
    let mut head = [0u8; 12];
    let (s, l) = head.split_at_mut(8);
    s.copy_from_slice(&seq.to_be_bytes());
    l.copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    head
}

/// Appends one frame (`seq u64 BE ‖ len u32 BE ‖ bytes`) to a batch body.
#[cfg(test)]
fn write_frame(out: &mut Vec<u8>, seq: u64, bytes: &[u8]) {
    out.extend_from_slice(&frame_head(seq, bytes.len()));
    out.extend_from_slice(bytes);
}

/// Splits a batch body into frames; `None` if it is malformed.
fn read_frames(mut body: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (head, rest) = body.split_at_checked(12)?;
        let seq = u64::from_be_bytes(head.get(..8)?.try_into().ok()?);
        let len = usize::try_from(u32::from_be_bytes(head.get(8..12)?.try_into().ok()?)).ok()?;
        let (msg, rest) = rest.split_at_checked(len)?;
        out.push((seq, msg.to_vec()));
        body = rest;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // tests slice their own fixtures
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_caught() {
        let mut body = Vec::new();
        write_frame(&mut body, 7, b"hello");
        write_frame(&mut body, 8, b"");
        assert_eq!(
            read_frames(&body).unwrap(),
            vec![(7, b"hello".to_vec()), (8, vec![])]
        );
        assert!(read_frames(&body[..body.len() - 1]).is_none());
        assert!(read_frames(&body[..5]).is_none());
        assert_eq!(read_frames(&[]).unwrap(), vec![]);
    }
}
