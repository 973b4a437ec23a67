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
    })
    .with_context(|| {
        format!(
            "cannot start the FROST coordinator (relay {})",
            config.relay_url
        )
    })
}

/// Runs DKG unless a key exists (or `force`); prints the key and peg wallet address.
pub(crate) fn dkg(config: &Config, force: bool) -> Result<(RelayFrostCoordinator, PublicKey)> {
    let mut c = coordinator(config)?;
    let key = match c.aggregate_public_key() {
        Some(existing) if !force => {
            println!("an aggregate key exists already (run with --force to replace it)");
            existing
        }
        _ => {
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

/// `dkg-sign`: DKG, then a signature over the test-message digest of
/// `message` ([`ToSign::Test`]: never a transaction sighash), verified.
pub(crate) fn dkg_sign(config: &Config, message: &str, force: bool) -> Result<()> {
    let (mut c, key) = dkg(config, force)?;
    let item = SignItem {
        key,
        message: ToSign::Test {
            text: message.to_owned(),
        },
    };
    let digest = item.message.digest();
    let sig = c
        .sign(message.as_bytes(), &[item])
        .context("signing failed")?
        .pop()
        .context("no signature returned")?;
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
    println!(
        "message:   {message:?} (test digest {})",
        coordinator::bitcoin::hex::DisplayHex::to_lower_hex_string(&digest[..])
    );
    println!("signature: {sig}");
    println!(
        "verified against the BIP-341 tweaked key {}",
        tweaked.to_x_only_public_key()
    );
    Ok(())
}
