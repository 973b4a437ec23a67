//! The emulator fixture shared by the guard's tests over real HTTP: keys
//! from fixed secrets, sign requests, the Stacks side of a peg (its key
//! published, a peg-in minted, a request burned) and a guard opened on the
//! devnet's bitcoind and stacks-node emulators with a real signer set file,
//! allowlist and SQLite store.
//!
//! Each test binary (and `examples/guard_bench.rs`, by `#[path]`) compiles
//! its own copy and uses only part of it, hence the `dead_code` allowances.

use std::path::{Path, PathBuf};

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{
    absolute, transaction, Address, Amount, OutPoint, ScriptBuf, Transaction, TxIn, TxOut, Txid,
};
use devnet::{BitcoinEmulator, BitcoinState, StacksEmulator, StacksState, User};
use frost_net::{SignItem, SignRequest, SignerFile, ToSign};
use peg_rules::SignPayload;
use signer_guard::{BitcoinNodeConfig, Confirmations, Guard, GuardConfig, StacksNodeConfig};
use stacks_wire::{ContractId, PrincipalData, Value};

/// The peg's magic bytes.
#[allow(dead_code)]
pub(crate) const MAGIC: [u8; 2] = *b"id";

/// The guard of the fixture, on the emulators through the real clients.
pub(crate) type EmulatorGuard =
    Guard<bitcoin_node_client::UreqBitcoinNode, stacks_node_client::UreqStacksNode>;

/// The secret key `[i; 32]`.
#[allow(dead_code)]
pub(crate) fn secret(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i; 32]).unwrap()
}

/// The public key of `secret(i)`.
#[allow(dead_code)]
pub(crate) fn key(i: u8) -> PublicKey {
    secret(i).public_key(&Secp256k1::new())
}

/// A sign request for `payload`, every sighash to be signed by `key`.
#[allow(dead_code)]
pub(crate) fn request(id: u64, payload: &SignPayload, key: &PublicKey) -> SignRequest {
    SignRequest {
        id,
        payload: payload.encode(),
        items: payload
            .sighashes()
            .unwrap()
            .into_iter()
            .map(|sighash| SignItem {
                key: *key,
                message: ToSign::Taproot { sighash },
            })
            .collect(),
    }
}

/// The transaction `txid` on the emulated chain.
#[allow(dead_code)]
pub(crate) fn find(b: &BitcoinState, txid: &Txid) -> Transaction {
    b.locate(txid).unwrap().0
}

/// The Bitcoin side of the peg at `peg`: alice funded (the scan starts at
/// that height), her peg-in of 100 000 sats mined, then her peg-out request
/// of 30 000 sats (a 5 000 sat fee output) mined; blocks pay `OP_RETURN 0`.
/// Returns the chain, alice, the start height, the peg-in and the request.
#[allow(dead_code)]
pub(crate) fn alice_pegged_in_and_out(peg: &Address) -> (BitcoinState, User, u64, Txid, Txid) {
    let burn = ScriptBuf::new_op_return([0u8]);
    let mut b = BitcoinState::new();
    let mut alice = User::new("alice", 1);
    alice.fund(&mut b, &burn);
    let start_height = b.height();
    let stx = alice.stx.clone();
    let peg_in = alice
        .peg_in(&mut b, MAGIC, peg, &stx, Amount::from_sat(100_000))
        .unwrap();
    b.mine(&burn);
    let req = alice
        .peg_out(
            &mut b,
            MAGIC,
            peg,
            Amount::from_sat(30_000),
            Amount::from_sat(5_000),
        )
        .unwrap();
    b.mine(&burn);
    (b, alice, start_height, peg_in, req)
}

/// [`alice_pegged_in_and_out`] and [`stacks_state`] for `peg_key`, then a
/// second peg-in of alice's (50 000 sats) in its own block at the tip,
/// minted two Stacks blocks deep: the books need it to back the supply.
/// Returns the chains, alice, the start height, the peg-in, the request and
/// the second peg-in.
#[allow(dead_code)]
pub(crate) fn with_a_second_minted_peg_in(
    peg_key: &PublicKey,
) -> (BitcoinState, StacksState, User, u64, Txid, Txid, Txid) {
    let peg = peg_rules::peg_wallet_address(peg_key, bitcoin::Network::Regtest);
    let (mut b, mut alice, start_height, peg_in, req) = alice_pegged_in_and_out(&peg);
    let stx = alice.stx.clone();
    let second = alice
        .peg_in(&mut b, MAGIC, &peg, &stx, Amount::from_sat(50_000))
        .unwrap();
    b.mine(&ScriptBuf::new_op_return([0u8]));
    let mut s = stacks_state(peg_key, &stx, &peg_in, &req);
    let mint = s.model.call(
        &owner(),
        "mint!",
        &[
            Value::UInt(50_000),
            Value::Principal(stx),
            Value::StringAscii(second.to_string()),
        ],
    );
    assert_eq!(mint.result, Value::Ok(Box::new(Value::Bool(true))));
    s.mine();
    s.mine();
    (b, s, alice, start_height, peg_in, req, second)
}

/// The sBTC contract of the fixture.
pub(crate) fn contract() -> ContractId {
    "ST000000000000000000002AMW42H.sbtc-alpha".parse().unwrap()
}

/// The contract's deployer, which mints and burns in the fixture.
pub(crate) fn owner() -> PrincipalData {
    PrincipalData::Standard(contract().address)
}

/// The Stacks side of the peg: the coordinator's key is `key(9)`, the
/// contract publishes `peg_key`, `peg_in`'s 100 000 sats are minted to
/// `stx` and `request`'s 30 000 burned from it, both two blocks deep.
pub(crate) fn stacks_state(
    peg_key: &PublicKey,
    stx: &PrincipalData,
    peg_in: &Txid,
    request: &Txid,
) -> StacksState {
    let mut s = StacksState::new(contract());
    let owner = owner();
    s.model.coordinator = Some((owner.clone(), key(9).serialize().to_vec()));
    s.model.wallet_key = Some(peg_key.serialize().to_vec());
    let txid = |t: &Txid| Value::StringAscii(t.to_string());
    let mint = s.model.call(
        &owner,
        "mint!",
        &[
            Value::UInt(100_000),
            Value::Principal(stx.clone()),
            txid(peg_in),
        ],
    );
    assert_eq!(mint.result, Value::Ok(Box::new(Value::Bool(true))));
    let burned = s.model.call(
        &owner,
        "burn!",
        &[
            Value::UInt(30_000),
            Value::Principal(stx.clone()),
            txid(request),
        ],
    );
    assert_eq!(burned.result, Value::Ok(Box::new(Value::Bool(true))));
    s.mine();
    s.mine();
    s
}

/// The fulfilment of `req` (its txid, the request transaction and the
/// amount it asks for) paying `to`, spending its fee output (output 2) and
/// the peg coin `coin`, the change less a 1 000 sat fee to `peg`. Returns
/// the transaction and its prevouts.
#[allow(dead_code)]
pub(crate) fn fulfilment(
    req: (Txid, &Transaction, u64),
    coin: (OutPoint, TxOut),
    to: &ScriptBuf,
    peg: &ScriptBuf,
) -> (Transaction, Vec<TxOut>) {
    let coins = [(OutPoint::new(req.0, 2), req.1.output[2].clone()), coin];
    let total: u64 = coins.iter().map(|(_, o)| o.value.to_sat()).sum();
    let tx = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: coins
            .iter()
            .map(|(o, _)| TxIn {
                previous_output: *o,
                ..TxIn::default()
            })
            .collect(),
        output: vec![
            TxOut {
                value: Amount::ZERO,
                script_pubkey: peg_rules::fulfilment_op_return(MAGIC, &[0; 32]),
            },
            TxOut {
                value: Amount::from_sat(req.2),
                script_pubkey: to.clone(),
            },
            TxOut {
                value: Amount::from_sat(total - req.2 - 1_000),
                script_pubkey: peg.clone(),
            },
        ],
    };
    (tx, coins.iter().map(|(_, o)| o.clone()).collect())
}

/// Alice's payout of `alice_pegged_in_and_out`'s request on `b` (its fee
/// output and her peg-in's coin, 30 000 sats to her, the change to `peg`),
/// as a sign request payload.
#[allow(dead_code)]
pub(crate) fn alice_payout(
    b: &BitcoinState,
    alice: &User,
    peg: &Address,
    peg_in: Txid,
    req: Txid,
) -> SignPayload {
    let peg_in_tx = find(b, &peg_in);
    let req_tx = find(b, &req);
    let (tx, prevouts) = fulfilment(
        (req, &req_tx, 30_000),
        (OutPoint::new(peg_in, 1), peg_in_tx.output[1].clone()),
        &alice.btc.script_pubkey(),
        &peg.script_pubkey(),
    );
    SignPayload::Fulfilment {
        request: req,
        tx,
        prevouts,
    }
}

/// Writes into `dir` the allowlist (`allowed` only) and the signer set file
/// of the fixture (signer 1 of a one-signer set, threshold 1). Returns the
/// signer file's path and the file loaded.
pub(crate) fn signer_file(dir: &Path, allowed: &User) -> (PathBuf, SignerFile) {
    std::fs::write(
        dir.join("allowlist.toml"),
        format!(
            "stacks = [\"{}\"]\nbitcoin = [\"{}\"]\n",
            allowed.stx, allowed.btc
        ),
    )
    .unwrap();
    let signer_file = format!(
        r#"relay_url = "http://127.0.0.1:1"
coordinator_public_key = "{}"
network = "regtest"
contract = "{}"
magic_bytes = "id"
threshold = 1
[policy]
allowlist_file = "allowlist.toml"
[[signers]]
id = 1
public_key = "{}"
key_ids = [1]
"#,
        key(1),
        contract(),
        key(2)
    );
    let path = dir.join("signer.toml");
    std::fs::write(&path, signer_file).unwrap();
    let file = SignerFile::load(&path).unwrap();
    (path, file)
}

/// The guard of signer 1 (a one-signer set, threshold 1) on the nodes at
/// `bitcoin_url` and `stacks_url`: its allowlist holds `allowed` only, it
/// scans from `start_height`, asks 1 Bitcoin and 2 Stacks confirmations
/// and holds `keys`. The directory holds its files.
#[allow(dead_code)]
pub(crate) fn guard_on(
    bitcoin_url: String,
    stacks_url: String,
    start_height: u64,
    allowed: &User,
    keys: &[PublicKey],
) -> (EmulatorGuard, tempfile::TempDir) {
    let bitcoin_node = BitcoinNodeConfig {
        url: bitcoin_url,
        user: None,
        password: None,
        cookie_file: None,
    };
    guard_on_node(bitcoin_node, stacks_url, start_height, allowed, keys)
}

/// [`guard_on`] with the Bitcoin node's whole configuration (a real
/// bitcoind wants its RPC user and password).
#[allow(dead_code)]
pub(crate) fn guard_on_node(
    bitcoin_node: BitcoinNodeConfig,
    stacks_url: String,
    start_height: u64,
    allowed: &User,
    keys: &[PublicKey],
) -> (EmulatorGuard, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = signer_file(dir.path(), allowed);
    let config = GuardConfig {
        bitcoin_node,
        stacks_node: StacksNodeConfig { url: stacks_url },
        confirmations: Confirmations {
            bitcoin: 1,
            stacks: 2,
        },
        start_height,
        data_dir: dir.path().join("guard"),
        rpc_timeout_ms: 5_000,
    };
    let guard = Guard::open(&config, &file, &path, keys).unwrap();
    (guard, dir)
}

/// The emulators serving `b` and `s` over HTTP on 127.0.0.1, and the guard
/// of signer 1 on them (`guard_on`).
#[allow(dead_code)]
pub(crate) fn guard_on_emulators(
    b: BitcoinState,
    s: StacksState,
    start_height: u64,
    allowed: &User,
    keys: &[PublicKey],
) -> (
    BitcoinEmulator,
    StacksEmulator,
    EmulatorGuard,
    tempfile::TempDir,
) {
    let btc = BitcoinEmulator::start("127.0.0.1:0", b).unwrap();
    let stacks = StacksEmulator::start("127.0.0.1:0", s).unwrap();
    let (guard, dir) = guard_on(btc.url(), stacks.url(), start_height, allowed, keys);
    (btc, stacks, guard, dir)
}
