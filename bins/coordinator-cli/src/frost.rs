//! `dkg` and `dkg-sign`: wiring the relay FROST coordinator.

use anyhow::{bail, Context, Result};
use coordinator::bitcoin::key::{Secp256k1, TapTweak};
use coordinator::bitcoin::secp256k1::{Message, PublicKey};
use coordinator::config::Config;
use frost_coordinator::{
    FrostCoordinator, RelayCoordinatorOptions, RelayFrostCoordinator, SignItem, ToSign,
};

/// Builds the relay FROST coordinator of `config`, its state in the data directory.
pub(crate) fn coordinator(config: &Config) -> Result<RelayFrostCoordinator> {
    RelayFrostCoordinator::new(RelayCoordinatorOptions {
        set: config.signer_set.clone(),
        private_key: *config.network_private_key.expose(),
        relay_url: config.relay_url.clone(),
        dkg_timeout: config.dkg_timeout,
        sign_timeout: config.sign_timeout,
        state_path: Some(config.data_dir.join("frost-coordinator.json")),
        network: config.signer_domain.0.clone(),
        contract: config.signer_domain.1.clone(),
        rounds_in_flight: config.rounds_in_flight,
    })
    .with_context(|| {
        format!(
            "cannot start the FROST coordinator (relay {})",
            config.relay_url
        )
    })
}

/// Runs DKG unless a key exists; prints the key and peg wallet address.
pub(crate) fn dkg(config: &Config) -> Result<(RelayFrostCoordinator, PublicKey)> {
    let _lock = crate::node::lock(config, "dkg")?;
    let mut c = coordinator(config)?;
    let key = match c.aggregate_public_key() {
        Some(existing) => {
            println!(
                "an aggregate key exists already (`dkg --rotate` makes a new one and keeps it)"
            );
            existing
        }
        None => {
            println!(
                "running DKG with {} signers ({} keys) through {}",
                config.signer_set.num_signers(),
                config.signer_set.num_keys(),
                config.relay_url
            );
            c.run_dkg_round().context("DKG failed")?
        }
    };
    println!("aggregate public key: {key}");
    println!(
        "peg wallet address:   {}",
        fee_wallet::peg_wallet_address(&key, config.network)
    );
    Ok((c, key))
}

/// `dkg-sign`: DKG unless a key exists, then a signature over a test
/// message (a tagged hash of the text, which no transaction sighash can
/// equal), verified against the tweaked key.
pub(crate) fn dkg_sign(config: &Config, text: &str) -> Result<()> {
    let (mut c, key) = dkg(config)?;
    let message = ToSign::Test { text: text.into() };
    let digest = message.digest();
    let sig = c
        .sign(
            &peg_rules::SignPayload::Test.encode(),
            &[SignItem { key, message }],
        )
        .context("signing failed")?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the signers returned no signature"))?;
    let secp = Secp256k1::verification_only();
    let (tweaked, _) = key.x_only_public_key().0.tap_tweak(&secp, None);
    if secp
        .verify_schnorr(
            &sig,
            &Message::from_digest(digest),
            &tweaked.to_x_only_public_key(),
        )
        .is_err()
    {
        bail!("the signature does not verify against the tweaked aggregate key");
    }
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("message:   {text:?} (test-message digest {hex})");
    println!("signature: {sig}");
    println!(
        "verified against the BIP-341 tweaked key {}",
        tweaked.to_x_only_public_key()
    );
    Ok(())
}
