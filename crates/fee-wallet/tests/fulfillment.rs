//! Fulfilments built by the peg wallet, signed by an in-process wsts DKG key,
//! checked with libbitcoinconsensus.

use bitcoin::hashes::Hash;
use bitcoin::key::{Secp256k1, TapTweak};
use bitcoin::secp256k1::{schnorr, Message, PublicKey, SecretKey};
use bitcoin::{Address, Amount, BlockHash, FeeRate, Network, OutPoint, Sequence, TxOut, Txid};
use bitcoin_node_client::Utxo;
use fee_wallet::{
    peg_wallet_address, BitcoinFeePolicy, BitcoinWallet, Error, FulfillmentInputs, PegWallet,
};
use peg_ops::{peg_out_request_sighash, BtcAddress, BurnHeight, MessageSignature, PegOutRequestOp};
use wsts::traits::{Aggregator as _, Signer as _};

const MAGIC: [u8; 2] = *b"T2";
const TIP: [u8; 32] = [0xab; 32];

/// Three signers (one key each, threshold 2) after an in-process DKG.
struct Frost {
    parties: Vec<wsts::v2::Party>,
    aggregator: wsts::v2::Aggregator,
    key: PublicKey,
}

impl Frost {
    fn new() -> Self {
        let mut rng = wsts::util::create_rng();
        let mut parties: Vec<wsts::v2::Party> = (0..3u32)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], 3, 3, 2, &mut rng))
            .collect();
        let polys = wsts::v2::test_helpers::dkg(&mut parties, &mut rng).expect("dkg succeeds");
        let mut aggregator = wsts::v2::Aggregator::new(3, 2);
        aggregator.init(&polys).unwrap();
        let group = polys
            .values()
            .fold(wsts::curve::point::Point::new(), |acc, p| acc + p.poly[0]);
        let key = PublicKey::from_slice(group.compress().as_bytes()).unwrap();
        Frost {
            parties,
            aggregator,
            key,
        }
    }

    /// A BIP-340 signature for the tweaked key, from signers 0 and 2.
    fn sign(&mut self, sighash: &[u8; 32]) -> schnorr::Signature {
        let mut rng = wsts::util::create_rng();
        let ids = [0u32, 2];
        let key_ids = [1u32, 3];
        let nonces: Vec<_> = ids
            .iter()
            .map(|i| self.parties[*i as usize].gen_nonce(&mut rng))
            .collect();
        let shares: Vec<_> = ids
            .iter()
            .flat_map(|i| {
                self.parties[*i as usize].sign_taproot(sighash, &ids, &key_ids, &nonces, None)
            })
            .collect();
        let proof = self
            .aggregator
            .sign_taproot(sighash, &nonces, &shares, &key_ids, None)
            .unwrap();
        schnorr::Signature::from_slice(&proof.to_bytes()).unwrap()
    }
}

fn recipient() -> Address {
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        .parse::<Address<_>>()
        .unwrap()
        .assume_checked()
}

/// A request for `amount` whose fee output pays the peg wallet of `peg`.
fn request(amount: u64, peg: &PublicKey) -> PegOutRequestOp {
    let to: BtcAddress = recipient().into();
    let amount = Amount::from_sat(amount);
    let key = SecretKey::from_slice(&[5; 32]).unwrap();
    PegOutRequestOp {
        amount,
        signature: MessageSignature::sign(
            peg_out_request_sighash(amount, &to.script_pubkey()),
            &key,
        ),
        recipient: to,
        peg_wallet_address: peg_wallet_address(peg, Network::Regtest).into(),
        fulfillment_fee: Amount::from_sat(5_000),
        memo: vec![],
        txid: Txid::from_byte_array([1; 32]),
        vtxindex: 1,
        block_height: BurnHeight(100),
        burn_header_hash: BlockHash::all_zeros(),
    }
}

fn utxo(txid: u8, vout: u32, sats: u64, confirmations: u32, key: &PublicKey) -> Utxo {
    Utxo {
        outpoint: OutPoint::new(Txid::from_byte_array([txid; 32]), vout),
        txout: TxOut {
            value: Amount::from_sat(sats),
            script_pubkey: peg_wallet_address(key, Network::Regtest).script_pubkey(),
        },
        confirmations,
    }
}

fn policy() -> BitcoinFeePolicy {
    BitcoinFeePolicy {
        floor: FeeRate::from_sat_per_vb(1).unwrap(),
        cap: FeeRate::from_sat_per_vb(50).unwrap(),
        subsidy: Amount::ZERO,
    }
}

fn wallet(p: BitcoinFeePolicy) -> PegWallet {
    PegWallet::new(Network::Regtest, MAGIC, p)
}

/// The fee UTXO of request 1, a big confirmed UTXO, an unconfirmed one and
/// another request's fee UTXO (reserved).
fn inputs(key: &PublicKey, rate: Option<u64>) -> FulfillmentInputs {
    FulfillmentInputs {
        utxos: vec![
            utxo(1, 2, 5_000, 3, key),
            utxo(20, 0, 50_000_000, 6, key),
            utxo(21, 0, 200_000_000, 0, key),
            utxo(22, 2, 900_000_000, 4, key),
            utxo(23, 1, 30_000_000, 2, key),
        ],
        fee_rate: rate.map(|r| FeeRate::from_sat_per_vb(r).unwrap()),
        stacks_chain_tip: TIP,
        reserved: vec![OutPoint::new(Txid::from_byte_array([22; 32]), 2)],
    }
}

fn fee_of(tx: &bitcoin::Transaction, prevouts: &[TxOut]) -> Amount {
    let inp = prevouts.iter().map(|o| o.value).sum::<Amount>();
    let out = tx.output.iter().map(|o| o.value).sum::<Amount>();
    inp - out
}

#[test]
fn a_fulfilment_pays_the_recipient_and_passes_consensus_when_signed_by_the_signers() {
    let mut frost = Frost::new();
    let w = wallet(policy());
    let op = request(60_000_000, &frost.key);
    let unsigned = w
        .build_fulfillment(&op, &frost.key, &inputs(&frost.key, Some(3)))
        .unwrap();
    let tx = &unsigned.tx;

    // Input 0 spends the request's output 2; then the largest confirmed,
    // unreserved UTXOs: never the unconfirmed one or another request's fee.
    let spent: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    assert_eq!(spent[0], OutPoint::new(op.txid, 2));
    assert_eq!(
        &spent[1..],
        &[
            utxo(20, 0, 0, 0, &frost.key).outpoint,
            utxo(23, 1, 0, 0, &frost.key).outpoint
        ]
    );
    assert!(tx
        .input
        .iter()
        .all(|i| i.sequence == Sequence::ENABLE_RBF_NO_LOCKTIME));

    // Output 0: OP_RETURN magic ‖ '!' ‖ chain tip.
    let mut expected_op_return = vec![0x6a, 35];
    expected_op_return.extend_from_slice(b"T2!");
    expected_op_return.extend_from_slice(&TIP);
    assert_eq!(
        tx.output[0].script_pubkey.as_bytes(),
        &expected_op_return[..]
    );
    assert_eq!(tx.output[0].value, Amount::ZERO);
    // Output 1: the recipient's scriptPubKey, exactly the amount.
    assert_eq!(tx.output[1].script_pubkey, recipient().script_pubkey());
    assert_eq!(tx.output[1].value, op.amount);
    // Output 2: change to the peg wallet.
    let peg_script = peg_wallet_address(&frost.key, Network::Regtest).script_pubkey();
    assert_eq!(tx.output[2].script_pubkey, peg_script);
    assert_eq!(tx.output.len(), 3);

    // Sign every input through FROST and attach.
    let sigs: Vec<_> = unsigned.sighashes.iter().map(|h| frost.sign(h)).collect();
    // Each signature is a BIP-340 signature for the BIP-341-tweaked key.
    let secp = Secp256k1::verification_only();
    let (tweaked, _) = frost.key.x_only_public_key().0.tap_tweak(&secp, None);
    for (sig, h) in sigs.iter().zip(&unsigned.sighashes) {
        secp.verify_schnorr(
            sig,
            &Message::from_digest(*h),
            &tweaked.to_x_only_public_key(),
        )
        .unwrap();
    }
    let signed = w.finalize_fulfillment(&unsigned, &sigs).unwrap();

    // The fee is the rate times the real vsize (64-byte signatures), paid
    // from the user's fulfilment fee.
    let fee = fee_of(&signed, &unsigned.prevouts);
    let vsize = signed.vsize() as u64;
    assert_eq!(
        fee,
        FeeRate::from_sat_per_vb(3).unwrap().fee_vb(vsize).unwrap()
    );
    assert!(fee <= op.fulfillment_fee);

    // One flipped bit in any signature fails libbitcoinconsensus.
    for i in 0..sigs.len() {
        let mut bad = sigs.clone();
        let mut bytes = *bad[i].as_ref();
        bytes[17] ^= 0x01;
        bad[i] = schnorr::Signature::from_slice(&bytes).unwrap();
        match w.finalize_fulfillment(&unsigned, &bad) {
            Err(Error::Consensus { input, .. }) => assert_eq!(input, i),
            other => panic!("corrupted signature on input {i} accepted: {other:?}"),
        }
    }
    // The wrong number of signatures is refused.
    assert!(matches!(
        w.finalize_fulfillment(&unsigned, &sigs[..1]),
        Err(Error::SignatureCount { .. })
    ));
}

#[test]
fn fee_rates_are_clamped_and_a_surplus_goes_to_change() {
    let frost = Frost::new();
    let w = wallet(policy());
    let op = request(10_000_000, &frost.key);
    let check = |rate: Option<u64>, expect: u64| {
        let u = w
            .build_fulfillment(&op, &frost.key, &inputs(&frost.key, rate))
            .unwrap();
        let vsize = {
            let mut t = u.tx.clone();
            for i in &mut t.input {
                i.witness = bitcoin::Witness::from_slice(&[[0u8; 64]]);
            }
            t.vsize() as u64
        };
        assert_eq!(
            fee_of(&u.tx, &u.prevouts),
            FeeRate::from_sat_per_vb(expect)
                .unwrap()
                .fee_vb(vsize)
                .unwrap(),
            "rate {rate:?}"
        );
        // In and out balance exactly: change = inputs - amount - fee.
        let change = u.tx.output[2].value;
        assert_eq!(
            u.prevouts.iter().map(|o| o.value).sum::<Amount>(),
            op.amount + change + fee_of(&u.tx, &u.prevouts)
        );
    };
    check(Some(2), 2);
    check(None, 1); // no estimate: the floor
    check(Some(0), 1); // below the floor
                       // Above the cap the user's 5,000 sats no longer cover it.
    assert!(matches!(
        w.build_fulfillment(&op, &frost.key, &inputs(&frost.key, Some(900))),
        Err(Error::FeeShortfall { .. })
    ));
}

#[test]
fn a_shortfall_waits_unless_the_subsidy_covers_it() {
    let frost = Frost::new();
    let op = request(10_000_000, &frost.key);
    let e = wallet(policy())
        .build_fulfillment(&op, &frost.key, &inputs(&frost.key, Some(40)))
        .unwrap_err();
    assert!(
        matches!(e, Error::FeeShortfall { offered, .. } if offered == Amount::from_sat(5_000)),
        "{e}"
    );
    assert!(e.is_transient(), "a shortfall waits for lower fees");
    let generous = BitcoinFeePolicy {
        subsidy: Amount::from_sat(20_000),
        ..policy()
    };
    let u = wallet(generous)
        .build_fulfillment(&op, &frost.key, &inputs(&frost.key, Some(40)))
        .unwrap();
    assert!(fee_of(&u.tx, &u.prevouts) > Amount::from_sat(5_000));
    assert_eq!(u.tx.output[1].value, op.amount);
}

#[test]
fn dust_change_is_left_to_the_miner() {
    let frost = Frost::new();
    let key = frost.key;
    let w = wallet(policy());
    let inputs = FulfillmentInputs {
        utxos: vec![utxo(1, 2, 5_000, 3, &key), utxo(30, 0, 50_000_000, 6, &key)],
        fee_rate: Some(FeeRate::from_sat_per_vb(10).unwrap()),
        stacks_chain_tip: TIP,
        reserved: vec![],
    };
    // Probe the fee of the two-input, three-output shape ...
    let probe = w
        .build_fulfillment(&request(40_000_000, &key), &key, &inputs)
        .unwrap();
    assert_eq!(probe.tx.output.len(), 3);
    let fee3 = fee_of(&probe.tx, &probe.prevouts).to_sat();
    // ... then ask for an amount that leaves 100 sats of change: dust.
    let op = request(50_000_000 + 5_000 - fee3 - 100, &key);
    let u = w.build_fulfillment(&op, &key, &inputs).unwrap();
    assert_eq!(u.tx.output.len(), 2, "no change output below dust");
    assert_eq!(u.tx.output[1].value, op.amount);
    assert_eq!(
        fee_of(&u.tx, &u.prevouts).to_sat(),
        fee3 + 100,
        "the dust goes to the miner"
    );
}

#[test]
fn insufficient_funds_and_a_missing_fee_utxo_are_clear_errors() {
    let frost = Frost::new();
    let w = wallet(policy());
    let e = w
        .build_fulfillment(
            &request(5_000_000_000, &frost.key),
            &frost.key,
            &inputs(&frost.key, Some(1)),
        )
        .unwrap_err();
    match e {
        Error::InsufficientFunds { needed, available } => {
            assert!(needed > Amount::from_sat(5_000_000_000));
            // Unconfirmed and reserved UTXOs do not count.
            assert_eq!(available, Amount::from_sat(50_000_000 + 30_000_000 + 5_000));
        }
        other => panic!("{other:?}"),
    }
    let mut no_fee = inputs(&frost.key, Some(1));
    no_fee.utxos.remove(0);
    assert_eq!(
        w.build_fulfillment(&request(1_000, &frost.key), &frost.key, &no_fee)
            .unwrap_err(),
        Error::MissingFeeUtxo
    );
    // A fee output paid to someone else is not ours to spend.
    let mut foreign = inputs(&frost.key, Some(1));
    foreign.utxos[0].txout.script_pubkey = recipient().script_pubkey();
    assert_eq!(
        w.build_fulfillment(&request(1_000, &frost.key), &frost.key, &foreign)
            .unwrap_err(),
        Error::MissingFeeUtxo
    );
}

#[test]
fn peg_wallet_addresses_per_network() {
    let key = SecretKey::from_slice(&[3; 32])
        .unwrap()
        .public_key(&Secp256k1::new());
    for (network, prefix) in [
        (Network::Bitcoin, "bc1p"),
        (Network::Testnet, "tb1p"),
        (Network::Signet, "tb1p"),
        (Network::Regtest, "bcrt1p"),
    ] {
        let a = peg_wallet_address(&key, network);
        assert!(a.to_string().starts_with(prefix), "{a}");
        // The output key is the BIP-341 tweak of the aggregate key with no script tree.
        let secp = Secp256k1::verification_only();
        let (tweaked, _) = key.x_only_public_key().0.tap_tweak(&secp, None);
        assert_eq!(
            a.script_pubkey(),
            bitcoin::ScriptBuf::new_p2tr_tweaked(tweaked)
        );
    }
}

#[test]
fn a_request_to_an_old_keys_address_spends_its_fee_output_there_and_pays_change_to_the_new_key() {
    let mut old = Frost::new();
    let mut new = Frost::new();
    let w = wallet(policy());
    // The request paid its fee output to the old key's address.
    let op = request(10_000_000, &old.key);
    let mut inputs = inputs(&new.key, Some(2));
    inputs.utxos[0] = utxo(1, 2, 5_000, 3, &old.key);
    let unsigned = w.build_fulfillment(&op, &new.key, &inputs).unwrap();
    assert_eq!(
        unsigned.tx.input[0].previous_output,
        OutPoint::new(op.txid, 2)
    );
    let old_script = peg_wallet_address(&old.key, Network::Regtest).script_pubkey();
    let new_script = peg_wallet_address(&new.key, Network::Regtest).script_pubkey();
    assert_eq!(unsigned.prevouts[0].script_pubkey, old_script);
    assert!(unsigned.prevouts[1..]
        .iter()
        .all(|o| o.script_pubkey == new_script));
    assert!(unsigned.tx.output[2..]
        .iter()
        .all(|o| o.script_pubkey == new_script));
    // Input 0 signed by the old key, the rest by the new: consensus accepts.
    let sigs: Vec<_> = unsigned
        .sighashes
        .iter()
        .enumerate()
        .map(|(i, h)| if i == 0 { old.sign(h) } else { new.sign(h) })
        .collect();
    w.finalize_fulfillment(&unsigned, &sigs).unwrap();
    // Signed with the wrong key, input 0 fails.
    let mut wrong = sigs.clone();
    wrong[0] = new.sign(&unsigned.sighashes[0]);
    assert!(matches!(
        w.finalize_fulfillment(&unsigned, &wrong),
        Err(Error::Consensus { input: 0, .. })
    ));
}

#[test]
fn a_sweep_spends_every_coin_to_the_new_key_in_one_order_and_passes_consensus() {
    let mut old = Frost::new();
    let new = Frost::new();
    let w = wallet(policy());
    let coins = vec![
        utxo(30, 1, 40_000, 3, &old.key),
        utxo(30, 0, 1_000_000, 9, &old.key),
        utxo(31, 4, 250_000, 1, &old.key),
    ];
    let rate = Some(FeeRate::from_sat_per_vb(3).unwrap());
    let unsigned = w.build_sweep(&coins, &new.key, rate).unwrap();
    let tx = &unsigned.tx;
    // Every coin, sorted by outpoint: the same coins always give the same txid.
    let mut expected: Vec<OutPoint> = coins.iter().map(|u| u.outpoint).collect();
    expected.sort();
    let spent: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    assert_eq!(spent, expected);
    let mut reversed = coins.clone();
    reversed.reverse();
    assert_eq!(
        w.build_sweep(&reversed, &new.key, rate)
            .unwrap()
            .tx
            .compute_txid(),
        tx.compute_txid()
    );
    // One output: the new key's peg wallet, everything but the fee.
    assert_eq!(tx.output.len(), 1);
    assert_eq!(
        tx.output[0].script_pubkey,
        peg_wallet_address(&new.key, Network::Regtest).script_pubkey()
    );
    let fee = fee_of(tx, &unsigned.prevouts);
    assert_eq!(tx.output[0].value, Amount::from_sat(1_290_000) - fee);
    let sigs: Vec<_> = unsigned.sighashes.iter().map(|h| old.sign(h)).collect();
    let signed = w.finalize_fulfillment(&unsigned, &sigs).unwrap();
    assert_eq!(
        fee,
        FeeRate::from_sat_per_vb(3)
            .unwrap()
            .fee_vb(signed.vsize() as u64)
            .unwrap()
    );
    // Coins that cannot pay the fee and a non-dust output are not swept.
    assert!(matches!(
        w.build_sweep(&[utxo(32, 0, 400, 3, &old.key)], &new.key, rate),
        Err(Error::InsufficientFunds { .. })
    ));
}
