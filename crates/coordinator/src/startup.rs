//! Start-up: the peg wallet key in the contract must be ours.
//!
//! - The contract has no key: run DKG (unless we already hold a key), publish
//!   it with `set-bitcoin-wallet-public-key`, and wait until the contract
//!   shows it.
//! - The contract has our key: go on.
//! - The contract has another key: refuse to start. Silently running a new
//!   DKG would move the peg wallet and strand every coin at the old address.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bitcoin_node_client::BitcoinNode;

use bitcoin::secp256k1::PublicKey;
use fee_wallet::{next_nonce, StacksWallet};
use frost_coordinator::FrostCoordinator;
use log::info;
use peg_ops::contract;
use peg_queue::PegQueue;
use stacks_node_client::StacksNode;
use stacks_wire::{ContractId, PrincipalData, Value};

/// Why start-up stopped. (Large variants are fine: start-up runs once.)
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The contract holds a key that is not ours.
    #[error("the contract's peg wallet key is {contract}, but this coordinator's aggregate key is {ours}: refusing to start (a new DKG would strand the funds at the old address)")]
    KeyMismatch {
        /// The contract's key.
        contract: PublicKey,
        /// Ours.
        ours: PublicKey,
    },
    /// The contract holds a key and we hold none.
    #[error("the contract's peg wallet key is {0}, but this coordinator has no FROST state: restore frost-coordinator.json in the data directory (a new DKG would strand the funds)")]
    NoLocalKey(PublicKey),
    /// A rotation made a new key that the contract does not show yet.
    #[error("the contract's peg wallet key is {contract}, an older key of ours; our newest key {newest} is not published yet: finish the rotation with `coordinator-cli dkg --rotate` (it publishes {newest} without a new DKG)")]
    UnfinishedRotation {
        /// The contract's key (one of ours).
        contract: PublicKey,
        /// Our newest key.
        newest: PublicKey,
    },
    /// A rotation was asked for before any key was published.
    #[error("the contract holds no peg wallet key yet: there is nothing to rotate (run `coordinator-cli dkg` or `run`)")]
    NothingToRotate,
    /// The contract answered something that is no key.
    #[error("get-bitcoin-wallet-public-key returned {0}, expected (optional (buff 33))")]
    BadContractAnswer(String),
    /// A component failed.
    #[error("{0}")]
    Component(String),
    /// The configured and the contract's signer sets differ.
    #[error("the signer set in the configuration and in the contract differ:\n  {}", .0.join("\n  "))]
    SignerSetMismatch(Vec<String>),
    /// The configuration asks for the contract's signer set and there is none.
    #[error("relay.signer_set_from_contract is set but the contract has no signers (get-num-signers is 0)")]
    NoContractSigners,
    /// The key transaction did not show in the contract in time.
    #[error("set-bitcoin-wallet-public-key was broadcast but the contract did not show the key after waiting {0:.1?}")]
    NotConfirmed(Duration),
    /// A node or the relay did not answer within `startup_wait_secs`.
    #[error(
        "the {what} at {url} did not answer after waiting {waited:.1?} (startup_wait_secs): {last}"
    )]
    Unreachable {
        /// Which service.
        what: &'static str,
        /// Its URL.
        url: String,
        /// How long start-up waited.
        waited: Duration,
        /// Its last error.
        last: String,
    },
    /// A signal stopped start-up while it waited.
    #[error("stopped while waiting for the {what} at {url}")]
    Stopped {
        /// Which service.
        what: &'static str,
        /// Its URL.
        url: String,
    },
}

/// First pause between start-up probes; it doubles up to [`MAX_PROBE_PAUSE`].
pub const FIRST_PROBE_PAUSE: Duration = Duration::from_millis(250);

/// Longest pause between start-up probes.
pub const MAX_PROBE_PAUSE: Duration = Duration::from_secs(30);

/// Waits until `probe` succeeds, pausing 0.25 s, 0.5 s, 1 s … (at most
/// [`MAX_PROBE_PAUSE`]) between tries and logging each failure with the URL
/// and the time waited so far; gives up after `limit` (`None`: never).
///
/// # Errors
/// [`StartupError::Unreachable`] after `limit`, [`StartupError::Stopped`]
/// when `stop` is set.
#[allow(clippy::result_large_err)] // runs once at start-up
pub fn wait_for(
    what: &'static str,
    url: &str,
    limit: Option<Duration>,
    stop: &AtomicBool,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), StartupError> {
    let began = Instant::now();
    let mut pause = FIRST_PROBE_PAUSE;
    let mut tries = 0u32;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(StartupError::Stopped {
                what,
                url: url.to_owned(),
            });
        }
        tries += 1;
        match probe() {
            Ok(()) => {
                if tries > 1 {
                    info!(
                        "the {what} at {url} answers (after waiting {:.1?})",
                        began.elapsed()
                    );
                }
                return Ok(());
            }
            Err(last) => {
                let waited = began.elapsed();
                if limit.is_some_and(|l| waited >= l) {
                    return Err(StartupError::Unreachable {
                        what,
                        url: url.to_owned(),
                        waited,
                        last,
                    });
                }
                log::warn!(
                    "waiting for the {what} at {url} (try {tries}, waited {waited:.1?}, next in {pause:.1?}): {last}"
                );
                let mut until = Instant::now() + pause;
                if let Some(l) = limit {
                    until = until.min(began + l);
                }
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
                }
                pause = (pause * 2).min(MAX_PROBE_PAUSE);
            }
        }
    }
}

/// `run`'s first step: waits (see [`wait_for`]) until the stacks-node, the
/// Bitcoin node and the relay answer, in that order, each named by URL.
///
/// # Errors
/// See [`wait_for`].
#[allow(clippy::result_large_err)] // runs once at start-up
pub fn wait_for_services<S: StacksNode, B: BitcoinNode>(
    stacks: &S,
    bitcoin: &B,
    config: &crate::config::Config,
    stop: &AtomicBool,
) -> Result<(), StartupError> {
    let limit = config.startup_wait;
    wait_for("stacks-node", &config.stacks_node_url, limit, stop, || {
        stacks.get_info().map(|_| ()).map_err(|e| e.to_string())
    })?;
    wait_for(
        "Bitcoin node",
        &config.bitcoin_node_url,
        limit,
        stop,
        || {
            bitcoin
                .get_block_count()
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )?;
    let timeout = config.rpc_timeout;
    wait_for("relay", &config.relay_url, limit, stop, || {
        relay_health(&config.relay_url, timeout)
    })
}

/// Asks the relay's `/health` (plain HTTP; over `https://` a TCP connection
/// is all that is checked): `Ok` for any HTTP answer below 500.
fn relay_health(url: &str, timeout: Duration) -> Result<(), String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        _ => return Err(format!("{url} is not an http:// or https:// URL")),
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{}", if tls { 443 } else { 80 })
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    if tls {
        return Ok(());
    }
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /health HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or_default()
            )
        })?;
    if status >= 500 {
        return Err(format!("/health answered HTTP {status}"));
    }
    Ok(())
}

fn component(e: impl std::fmt::Display) -> StartupError {
    StartupError::Component(e.to_string())
}

/// Reads the signer set published in the contract (`get-num-signers`,
/// `get-signer-data` for ids 1..=n, `get-threshold`); `None` when the
/// contract has no signers.
///
/// # Errors
/// A node failure or an answer of the wrong shape.
#[allow(clippy::result_large_err)] // runs once at start-up
pub fn contract_signer_set<S: StacksNode>(
    stacks: &S,
    contract_id: &ContractId,
    sender: &PrincipalData,
) -> Result<Option<frost_coordinator::SignerSet>, StartupError> {
    let read = |f: &str, args: &[Value]| {
        stacks
            .call_read(contract_id, f, args, sender)
            .map_err(component)
    };
    let uint = |v: Value, what: &str| match v {
        Value::UInt(n) => u32::try_from(n)
            .map_err(|_| StartupError::BadContractAnswer(format!("{what} u{n} is too large"))),
        other => Err(StartupError::BadContractAnswer(format!(
            "{what} returned {other}"
        ))),
    };
    let n = uint(read(contract::GET_NUM_SIGNERS, &[])?, "get-num-signers")?;
    if n == 0 {
        return Ok(None);
    }
    let threshold = uint(read(contract::GET_THRESHOLD, &[])?, "get-threshold")?;
    let mut signers = Vec::new();
    for id in 1..=n {
        let v = read(contract::GET_SIGNER_DATA, &[Value::UInt(u128::from(id))])?;
        let bad = |v: &Value| {
            StartupError::BadContractAnswer(format!("get-signer-data u{id} returned {v}"))
        };
        let Value::Optional(Some(t)) = &v else {
            return Err(bad(&v));
        };
        let Value::Tuple(fields) = t.as_ref() else {
            return Err(bad(&v));
        };
        let key = match fields.get("public-key") {
            Some(Value::Buffer(b)) => PublicKey::from_slice(b).map_err(|_| bad(&v))?,
            _ => return Err(bad(&v)),
        };
        let key_ids = match fields.get("key-ids") {
            Some(Value::List(ids)) => ids
                .iter()
                .map(|i| uint(i.clone(), "key id"))
                .collect::<Result<Vec<u32>, _>>()?,
            _ => return Err(bad(&v)),
        };
        signers.push(frost_coordinator::SignerInfo {
            id,
            public_key: key,
            key_ids,
            private_key: None,
        });
    }
    Ok(Some(frost_coordinator::SignerSet {
        threshold,
        dkg_threshold: None,
        signers,
    }))
}

/// Returns the differences between the configured and the contract's signer
/// sets (empty when they agree; demo private keys and the DKG threshold,
/// which the contract does not hold, are not compared).
pub fn signer_set_differences(
    config: &frost_coordinator::SignerSet,
    contract: &frost_coordinator::SignerSet,
) -> Vec<String> {
    let mut d = Vec::new();
    if config.threshold != contract.threshold {
        d.push(format!(
            "threshold: config {}, contract {}",
            config.threshold, contract.threshold
        ));
    }
    if config.signers.len() != contract.signers.len() {
        d.push(format!(
            "signers: config has {}, contract {}",
            config.signers.len(),
            contract.signers.len()
        ));
    }
    for (a, b) in config.signers.iter().zip(&contract.signers) {
        if a.public_key != b.public_key {
            d.push(format!(
                "signer {}: public key config {}, contract {}",
                a.id, a.public_key, b.public_key
            ));
        }
        if a.key_ids != b.key_ids {
            d.push(format!(
                "signer {}: key ids config {:?}, contract {:?}",
                a.id, a.key_ids, b.key_ids
            ));
        }
    }
    d
}

/// Reads the contract's peg wallet key.
#[allow(clippy::result_large_err)] // runs once at start-up
///
/// # Errors
/// A node failure or an answer that is no key.
pub fn contract_wallet_key<S: StacksNode>(
    stacks: &S,
    contract_id: &ContractId,
    sender: &PrincipalData,
) -> Result<Option<PublicKey>, StartupError> {
    let v = stacks
        .call_read(
            contract_id,
            contract::GET_BITCOIN_WALLET_PUBLIC_KEY,
            &[],
            sender,
        )
        .map_err(component)?;
    match v {
        Value::Optional(None) => Ok(None),
        Value::Optional(Some(b)) => match *b {
            Value::Buffer(bytes) => PublicKey::from_slice(&bytes)
                .map(Some)
                .map_err(|_| StartupError::BadContractAnswer(format!("0x{}", hex::encode(&bytes)))),
            other => Err(StartupError::BadContractAnswer(other.to_string())),
        },
        other => Err(StartupError::BadContractAnswer(other.to_string())),
    }
}

/// Makes sure the contract holds our aggregate key; returns it.
#[allow(clippy::result_large_err)] // runs once at start-up
///
/// # Errors
/// See [`StartupError`].
pub fn ensure_wallet_key<S, SW, F, Q>(
    stacks: &S,
    wallet: &SW,
    frost: &mut F,
    queue: &Q,
    contract_id: &ContractId,
    wait: Duration,
    poll: Duration,
) -> Result<PublicKey, StartupError>
where
    S: StacksNode,
    SW: StacksWallet,
    F: FrostCoordinator,
    Q: PegQueue,
{
    let me = PrincipalData::Standard(wallet.address());
    let theirs = contract_wallet_key(stacks, contract_id, &me)?;
    match (theirs, frost.aggregate_public_key()) {
        (Some(theirs), Some(ours)) if theirs == ours => {
            info!("peg wallet key {ours} is set in the contract");
            Ok(ours)
        }
        (Some(theirs), Some(newest)) if frost.keys().contains(&theirs) => {
            Err(StartupError::UnfinishedRotation {
                contract: theirs,
                newest,
            })
        }
        (Some(theirs), Some(ours)) => Err(StartupError::KeyMismatch {
            contract: theirs,
            ours,
        }),
        (Some(theirs), None) => Err(StartupError::NoLocalKey(theirs)),
        (None, ours) => {
            let key = match ours {
                Some(k) => k,
                None => {
                    info!("no peg wallet key anywhere: running DKG");
                    frost.run_dkg_round().map_err(component)?
                }
            };
            publish_key(stacks, wallet, queue, contract_id, &key, wait, poll)?;
            Ok(key)
        }
    }
}

/// Rotates the peg wallet key: a new key through the signers' gated DKG
/// (every signer stored its share and signed a test message with it), then
/// published in the contract. The old key stays in the FROST coordinator's
/// and the signers' key history: coins at its address (and pending requests'
/// fee outputs) are still signed with it, and `run` sweeps them to the new
/// key. An unfinished rotation (a new key made but not published) is
/// finished without another DKG. Returns (old key, new key).
#[allow(clippy::result_large_err)] // runs once, by hand
///
/// # Errors
/// See [`StartupError`]; a failed DKG leaves the old key current.
pub fn rotate_key<S, SW, F, Q>(
    stacks: &S,
    wallet: &SW,
    frost: &mut F,
    queue: &Q,
    contract_id: &ContractId,
    wait: Duration,
    poll: Duration,
) -> Result<(PublicKey, PublicKey), StartupError>
where
    S: StacksNode,
    SW: StacksWallet,
    F: FrostCoordinator,
    Q: PegQueue,
{
    let me = PrincipalData::Standard(wallet.address());
    let Some(old) = contract_wallet_key(stacks, contract_id, &me)? else {
        return Err(StartupError::NothingToRotate);
    };
    let newest = match frost.aggregate_public_key() {
        Some(k) if frost.keys().contains(&old) => k,
        Some(ours) => {
            return Err(StartupError::KeyMismatch {
                contract: old,
                ours,
            })
        }
        None => return Err(StartupError::NoLocalKey(old)),
    };
    let new = if newest != old {
        info!("key {newest} was made by an earlier rotation but not published: publishing it");
        newest
    } else {
        info!("rotating peg wallet key {old}: running DKG with the signers");
        frost.run_dkg_round().map_err(component)?
    };
    publish_key(stacks, wallet, queue, contract_id, &new, wait, poll)?;
    Ok((old, new))
}

/// Publishes `key` with `set-bitcoin-wallet-public-key` and waits until the
/// contract shows it.
#[allow(clippy::result_large_err)]
fn publish_key<S, SW, Q>(
    stacks: &S,
    wallet: &SW,
    queue: &Q,
    contract_id: &ContractId,
    key: &PublicKey,
    wait: Duration,
    poll: Duration,
) -> Result<(), StartupError>
where
    S: StacksNode,
    SW: StacksWallet,
    Q: PegQueue,
{
    let me = PrincipalData::Standard(wallet.address());
    let account = stacks.get_account(&me).map_err(component)?;
    let nonce = next_nonce(
        account.nonce,
        queue.last_signed_stacks_nonce().map_err(component)?,
    );
    let tx = wallet
        .build_set_wallet_public_key(key, nonce)
        .map_err(component)?;
    info!(
        "publishing peg wallet key {key} (stacks tx {}, nonce {nonce})",
        tx.txid
    );
    stacks.broadcast_transaction(&tx.raw).map_err(component)?;
    let started = Instant::now();
    let deadline = started + wait;
    loop {
        if contract_wallet_key(stacks, contract_id, &me)? == Some(*key) {
            info!("the contract shows peg wallet key {key}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartupError::NotConfirmed(started.elapsed()));
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use fee_wallet::MockStacksWallet;
    use frost_coordinator::MockFrostCoordinator;
    use stacks_node_client::{AccountInfo, MockStacksNode};
    use std::sync::{Arc, Mutex};

    fn key_value(k: &PublicKey) -> Value {
        Value::some(Value::Buffer(k.serialize().to_vec()))
    }

    /// A node whose contract key is `state`, set when the key tx is broadcast.
    fn node(state: Arc<Mutex<Option<PublicKey>>>) -> MockStacksNode {
        let mut n = MockStacksNode::new();
        let s1 = state.clone();
        n.expect_call_read().returning(move |_, f, _, _| {
            assert_eq!(f, contract::GET_BITCOIN_WALLET_PUBLIC_KEY);
            Ok(s1.lock().unwrap().map_or(Value::none(), |k| key_value(&k)))
        });
        n.expect_get_account().returning(|_| {
            Ok(AccountInfo {
                balance: 1,
                nonce: 3,
            })
        });
        n.expect_broadcast_transaction().returning(move |raw| {
            *state.lock().unwrap() = Some(PublicKey::from_slice(raw).unwrap());
            Ok(stacks_wire::StacksTxid([0; 32]))
        });
        n
    }

    fn wallet() -> MockStacksWallet {
        let mut w = MockStacksWallet::new();
        w.expect_address().returning(wallet_address);
        w.expect_build_set_wallet_public_key()
            .returning(|k, nonce| {
                assert_eq!(nonce, 3);
                // The fake "transaction" carries the key so the node double can apply it.
                Ok(peg_ops::SignedStacksTx {
                    txid: stacks_wire::StacksTxid([1; 32]),
                    nonce,
                    fee: 1,
                    raw: k.serialize().to_vec(),
                })
            });
        w
    }

    fn frost_with(key: Option<PublicKey>, dkg_runs: usize) -> MockFrostCoordinator {
        let mut f = MockFrostCoordinator::new();
        let held = Arc::new(Mutex::new(key));
        let h = held.clone();
        f.expect_aggregate_public_key()
            .returning(move || *h.lock().unwrap());
        let h = held.clone();
        f.expect_keys()
            .returning(move || h.lock().unwrap().iter().copied().collect());
        f.expect_run_dkg_round().times(dkg_runs).returning(move || {
            *held.lock().unwrap() = Some(aggregate_key());
            Ok(aggregate_key())
        });
        f
    }

    fn other_key(i: u8) -> PublicKey {
        bitcoin::secp256k1::SecretKey::from_slice(&[i; 32])
            .unwrap()
            .public_key(&secp())
    }

    /// A FROST double holding `held` keys (newest last) that makes `made` on DKG.
    fn frost_history(held: Vec<PublicKey>, made: Option<PublicKey>) -> MockFrostCoordinator {
        let mut f = MockFrostCoordinator::new();
        let keys = Arc::new(Mutex::new(held));
        let k = keys.clone();
        f.expect_aggregate_public_key()
            .returning(move || k.lock().unwrap().last().copied());
        let k = keys.clone();
        f.expect_keys().returning(move || k.lock().unwrap().clone());
        f.expect_run_dkg_round()
            .times(usize::from(made.is_some()))
            .returning(move || {
                let new = made.unwrap();
                keys.lock().unwrap().push(new);
                Ok(new)
            });
        f
    }

    #[allow(clippy::result_large_err)]
    fn rotate(
        state: Arc<Mutex<Option<PublicKey>>>,
        frost: &mut MockFrostCoordinator,
    ) -> Result<(PublicKey, PublicKey), StartupError> {
        rotate_key(
            &node(state),
            &wallet(),
            frost,
            &MemQueue::default(),
            &contract_id(),
            Duration::from_secs(1),
            Duration::from_millis(1),
        )
    }

    #[test]
    fn a_rotation_publishes_a_new_key_and_keeps_the_old_one() {
        let (old, new) = (other_key(5), other_key(6));
        let state = Arc::new(Mutex::new(Some(old)));
        let mut f = frost_history(vec![old], Some(new));
        assert_eq!(rotate(state.clone(), &mut f).unwrap(), (old, new));
        assert_eq!(
            *state.lock().unwrap(),
            Some(new),
            "the contract shows the new key"
        );
        assert_eq!(f.keys(), vec![old, new], "the old key still signs");
    }

    #[test]
    fn an_unfinished_rotation_stops_run_and_is_finished_without_a_second_dkg() {
        let (old, new) = (other_key(5), other_key(6));
        let state = Arc::new(Mutex::new(Some(old)));
        // DKG made `new` but the coordinator stopped before publishing it.
        let mut f = frost_history(vec![old, new], None);
        match run(state.clone(), &mut f) {
            Err(StartupError::UnfinishedRotation { contract, newest }) => {
                assert_eq!((contract, newest), (old, new))
            }
            other => panic!("expected UnfinishedRotation, got {other:?}"),
        }
        assert_eq!(rotate(state.clone(), &mut f).unwrap(), (old, new));
        assert_eq!(*state.lock().unwrap(), Some(new));
    }

    #[test]
    fn a_rotation_refuses_without_a_published_key_or_with_a_foreign_one() {
        let mut f = frost_history(vec![other_key(5)], None);
        assert!(matches!(
            rotate(Arc::new(Mutex::new(None)), &mut f),
            Err(StartupError::NothingToRotate)
        ));
        assert!(matches!(
            rotate(Arc::new(Mutex::new(Some(other_key(9)))), &mut f),
            Err(StartupError::KeyMismatch { .. })
        ));
    }

    #[allow(clippy::result_large_err)]
    fn run(
        state: Arc<Mutex<Option<PublicKey>>>,
        frost: &mut MockFrostCoordinator,
    ) -> Result<PublicKey, StartupError> {
        ensure_wallet_key(
            &node(state),
            &wallet(),
            frost,
            &MemQueue::default(),
            &contract_id(),
            Duration::from_secs(1),
            Duration::from_millis(1),
        )
    }

    fn signer_node(threshold: u128, keys: Vec<(PublicKey, Vec<u128>)>) -> MockStacksNode {
        let mut n = MockStacksNode::new();
        let count = keys.len() as u128;
        n.expect_call_read().returning(move |_, f, args, _| {
            Ok(match f {
                contract::GET_NUM_SIGNERS => Value::UInt(count),
                contract::GET_THRESHOLD => Value::UInt(threshold),
                contract::GET_SIGNER_DATA => {
                    let Value::UInt(id) = args[0] else { panic!() };
                    let (k, ids) = &keys[id as usize - 1];
                    Value::some(
                        Value::tuple([
                            (
                                "addr",
                                Value::Principal(PrincipalData::Standard(wallet_address())),
                            ),
                            ("public-key", Value::Buffer(k.serialize().to_vec())),
                            (
                                "key-ids",
                                Value::List(ids.iter().map(|i| Value::UInt(*i)).collect()),
                            ),
                        ])
                        .unwrap(),
                    )
                }
                other => panic!("{other}"),
            })
        });
        n
    }

    #[test]
    fn the_contract_signer_set_is_read_and_compared() {
        let k1 = aggregate_key();
        let k2 = bitcoin::secp256k1::SecretKey::from_slice(&[8; 32])
            .unwrap()
            .public_key(&secp());
        let me = PrincipalData::Standard(wallet_address());
        let set = contract_signer_set(
            &signer_node(2, vec![(k1, vec![1]), (k2, vec![2, 3])]),
            &contract_id(),
            &me,
        )
        .unwrap()
        .unwrap();
        assert_eq!(set.threshold, 2);
        assert_eq!(set.signers[1].id, 2);
        assert_eq!(set.signers[1].key_ids, vec![2, 3]);
        assert!(signer_set_differences(&set, &set).is_empty());
        let mut other = set.clone();
        other.threshold = 3;
        other.signers[0].public_key = k2;
        let d = signer_set_differences(&other, &set);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|l| l.contains("threshold: config 3, contract 2")),
            "{d:?}"
        );
        assert!(
            contract_signer_set(&signer_node(2, vec![]), &contract_id(), &me)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn no_key_anywhere_runs_dkg_and_publishes_it() {
        let state = Arc::new(Mutex::new(None));
        assert_eq!(
            run(state.clone(), &mut frost_with(None, 1)).unwrap(),
            aggregate_key()
        );
        assert_eq!(*state.lock().unwrap(), Some(aggregate_key()));
    }

    #[test]
    fn our_key_already_set_needs_nothing() {
        let state = Arc::new(Mutex::new(Some(aggregate_key())));
        assert_eq!(
            run(state, &mut frost_with(Some(aggregate_key()), 0)).unwrap(),
            aggregate_key()
        );
    }

    #[test]
    fn another_key_in_the_contract_refuses_to_start_without_a_new_dkg() {
        let other = bitcoin::secp256k1::SecretKey::from_slice(&[8; 32])
            .unwrap()
            .public_key(&secp());
        let state = Arc::new(Mutex::new(Some(other)));
        let e = run(state.clone(), &mut frost_with(Some(aggregate_key()), 0)).unwrap_err();
        assert!(matches!(e, StartupError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("strand"));
        let e = run(state.clone(), &mut frost_with(None, 0)).unwrap_err();
        assert!(matches!(e, StartupError::NoLocalKey(_)), "{e}");
        assert_eq!(
            *state.lock().unwrap(),
            Some(other),
            "the contract's key is untouched"
        );
    }

    #[test]
    fn a_key_that_never_shows_up_is_an_error() {
        let mut n = MockStacksNode::new();
        n.expect_call_read()
            .returning(|_, _, _, _| Ok(Value::none()));
        n.expect_get_account().returning(|_| {
            Ok(AccountInfo {
                balance: 1,
                nonce: 3,
            })
        });
        n.expect_broadcast_transaction()
            .returning(|_| Ok(stacks_wire::StacksTxid([0; 32])));
        let e = ensure_wallet_key(
            &n,
            &wallet(),
            &mut frost_with(Some(aggregate_key()), 0),
            &MemQueue::default(),
            &contract_id(),
            Duration::from_millis(20),
            Duration::from_millis(5),
        )
        .unwrap_err();
        assert!(matches!(e, StartupError::NotConfirmed(_)));
        let mut bad = MockStacksNode::new();
        bad.expect_call_read()
            .returning(|_, _, _, _| Ok(Value::UInt(5)));
        let e = ensure_wallet_key(
            &bad,
            &wallet(),
            &mut frost_with(None, 0),
            &MemQueue::default(),
            &contract_id(),
            Duration::from_millis(20),
            Duration::from_millis(5),
        )
        .unwrap_err();
        assert!(matches!(e, StartupError::BadContractAnswer(_)));
    }
}
