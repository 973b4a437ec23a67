//! Users' tools count signers' attestations of the published peg wallet key:
//! only authentic attestations, by signers of the set, of the file's contract
//! and of the key asked about, each signer once.

use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use frost_net::messages::Refusal;
use frost_net::{
    messages::Message, verify_attestations, Attestation, Codec, EnvelopeError, Sender, SignerFile,
};

const CONTRACT: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc";

fn sk(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i + 1; 32]).unwrap()
}

fn pk(i: u8) -> PublicKey {
    sk(i).public_key(&Secp256k1::new())
}

/// Three signers (keys sk(1..=3)) with two key ids each, threshold 4; the
/// coordinator's key is sk(0). Read from TOML, as a user's tool reads it.
fn file(contract: Option<&str>) -> SignerFile {
    let contract = contract.map_or(String::new(), |c| format!("contract = \"{c}\"\n"));
    let mut text = format!(
        "relay_url = \"http://127.0.0.1:1\"\ncoordinator_public_key = \"{}\"\nnetwork = \"regtest\"\n{contract}threshold = 4\n",
        pk(0)
    );
    for i in 1..=3u8 {
        text.push_str(&format!(
            "[[signers]]\nid = {i}\npublic_key = \"{}\"\nkey_ids = [{}, {}]\n",
            pk(i),
            i * 2 - 1,
            i * 2
        ));
    }
    toml::from_str(&text).unwrap()
}

fn attestation(
    file: &SignerFile,
    signer: u8,
    contract: &str,
    key: PublicKey,
    time: u64,
) -> Vec<u8> {
    Codec::new(file)
        .seal(
            Sender::Signer(u32::from(signer)),
            &sk(signer),
            &Message::Attestation(Attestation {
                contract: contract.into(),
                key,
                time,
            }),
        )
        .unwrap()
}

#[test]
fn attestations_of_the_set_count_by_signer_and_key_ids() {
    let f = file(Some(CONTRACT));
    let key = pk(9);
    let envs: Vec<Vec<u8>> = (1..=3)
        .map(|i| attestation(&f, i, CONTRACT, key, 100))
        .collect();
    let t = verify_attestations(&f, &key, &envs).unwrap();
    assert_eq!(t.signers.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(t.key_ids, 6);
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
    assert!(t.reaches(f.set.threshold));
    // Two signers hold four key ids: exactly the threshold.
    let t = verify_attestations(&f, &key, &envs[..2]).unwrap();
    assert_eq!(t.key_ids, 4);
    assert!(t.reaches(4));
    let t = verify_attestations(&f, &key, &envs[..1]).unwrap();
    assert!(!t.reaches(4), "one signer's two key ids are below 4");
}

#[test]
fn forged_attestations_are_not_counted() {
    let f = file(Some(CONTRACT));
    let key = pk(9);
    // Signed by a key that is not signer 2's.
    let codec = Codec::new(&f);
    let msg = Message::Attestation(Attestation {
        contract: CONTRACT.into(),
        key,
        time: 1,
    });
    let wrong_key = codec.seal(Sender::Signer(2), &sk(7), &msg).unwrap();
    // Signer 3's real attestation with one byte of the body changed.
    let mut tampered = attestation(&f, 3, CONTRACT, key, 1);
    let i = frost_net::envelope::HEADER_LEN + 2;
    tampered[i] ^= 1;
    // A signer that is not in the set.
    let stranger = codec.seal(Sender::Signer(4), &sk(4), &msg).unwrap();
    // A signer of another peg (same keys, another coordinator): another domain.
    let mut other = f.clone();
    other.coordinator_public_key = pk(8);
    let other_peg = attestation(&other, 1, CONTRACT, key, 1);
    let t = verify_attestations(&f, &key, &[wrong_key, tampered, stranger, other_peg]).unwrap();
    assert!(t.signers.is_empty(), "{:?}", t.signers);
    assert_eq!(t.key_ids, 0);
    assert_eq!(
        t.rejected.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(
        t.rejected[0].1.contains("bad signature"),
        "{:?}",
        t.rejected
    );
    // And the coordinator cannot attest at all.
    assert!(matches!(
        codec.seal(Sender::Coordinator, &sk(0), &msg),
        Err(EnvelopeError::WrongSender { .. })
    ));
}

#[test]
fn an_attestation_of_another_contract_or_key_is_not_counted() {
    let f = file(Some(CONTRACT));
    let key = pk(9);
    let envs = vec![
        attestation(
            &f,
            1,
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.other",
            key,
            5,
        ),
        attestation(&f, 2, CONTRACT, pk(8), 5),
        attestation(&f, 3, CONTRACT, key, 5),
    ];
    let t = verify_attestations(&f, &key, &envs).unwrap();
    assert_eq!(t.signers.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert_eq!(t.key_ids, 2);
    assert_eq!(t.rejected.len(), 2);
    assert!(t.rejected[0].1.contains("contract"), "{:?}", t.rejected);
    assert!(t.rejected[1].1.contains("another key"), "{:?}", t.rejected);
    // Another message kind of a signer is not an attestation.
    let refusal = Codec::new(&f)
        .seal(
            Sender::Signer(1),
            &sk(1),
            &Message::Refusal(Refusal {
                request: 1,
                rule: "x".into(),
            }),
        )
        .unwrap();
    let t = verify_attestations(&f, &key, &[refusal]).unwrap();
    assert!(t.signers.is_empty());
    assert!(t.rejected[0].1.contains("not an attestation"));
}

#[test]
fn a_signer_attesting_twice_counts_once() {
    let f = file(Some(CONTRACT));
    let key = pk(9);
    let envs: Vec<Vec<u8>> = [10, 30, 20]
        .into_iter()
        .map(|t| attestation(&f, 1, CONTRACT, key, t))
        .collect();
    let t = verify_attestations(&f, &key, &envs).unwrap();
    assert_eq!(t.signers.len(), 1);
    assert_eq!(t.signers.get(&1), Some(&30), "the newest time is kept");
    assert_eq!(t.key_ids, 2, "signer 1's two key ids, once");
    assert!(!t.reaches(4));
}

#[test]
fn a_file_without_a_contract_cannot_check_attestations() {
    let f = file(None);
    let e = verify_attestations::<Vec<u8>>(&f, &pk(9), &[]).unwrap_err();
    assert!(e.contains("no contract"), "{e}");
}
