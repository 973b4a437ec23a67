//! Whether the peg wallet key the contract publishes is one a threshold of
//! the user's signer set attests: checked before any BTC is paid into it.
//!
//! The coordinator serves each signer's newest attestation on
//! `GET /attestations` (JSON: a list of objects whose `envelope` is the
//! signed relay envelope, hex). The coordinator is not trusted: only the
//! envelopes count, each opened with the user's own signer set file
//! ([`frost_net::verify_attestations`]).

use bitcoin::secp256k1::PublicKey;
use frost_net::{AttestationTally, SignerFile};
use serde::Deserialize;

use crate::Error;

/// The most attestations read from one answer (a set has far fewer signers).
const MAX_ATTESTATIONS: usize = 4096;

/// Reads the envelopes of a `/attestations` answer. Other fields (the
/// coordinator's summary of each) are ignored: they are not signed.
///
/// # Errors
/// [`Error::Answer`] when the text is not such a list.
pub fn parse_attestations(json: &str) -> Result<Vec<Vec<u8>>, Error> {
    #[derive(Deserialize)]
    struct Item {
        envelope: String,
    }
    let items: Vec<Item> = serde_json::from_str(json).map_err(|e| {
        Error::Answer(format!(
            "/attestations is not a list of {{\"envelope\": hex}}: {e}"
        ))
    })?;
    if items.len() > MAX_ATTESTATIONS {
        return Err(Error::Answer(format!(
            "/attestations lists {} attestations, more than {MAX_ATTESTATIONS}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            hex::decode(&it.envelope)
                .map_err(|e| Error::Answer(format!("/attestations[{i}].envelope is not hex: {e}")))
        })
        .collect()
}

/// Counts the attestations of `key` among `envelopes` with the user's
/// signer set `file`; returns the tally when the attesting signers hold at
/// least the set's threshold of key ids.
///
/// # Errors
/// [`Error::NotAttested`] saying how many signers (and key ids) attested,
/// how many are needed, and why the others did not count.
pub fn check_attestations<B: AsRef<[u8]>>(
    file: &SignerFile,
    key: &PublicKey,
    envelopes: &[B],
) -> Result<AttestationTally, Error> {
    let tally = frost_net::verify_attestations(file, key, envelopes).map_err(Error::NotAttested)?;
    let needed = file.set.threshold;
    if tally.reaches(needed) {
        return Ok(tally);
    }
    let mut why = format!(
        "the peg wallet key {key} is attested by {} of the {} signers of the signer set ({} key ids); \
         {needed} key ids needed",
        tally.signers.len(),
        file.set.num_signers(),
        tally.key_ids,
    );
    if envelopes.is_empty() {
        why.push_str(
            "; the coordinator serves no attestations (yet: signers attest the published key \
             within a minute of seeing it; try again shortly)",
        );
    }
    if !tally.rejected.is_empty() {
        let reasons: Vec<String> = tally
            .rejected
            .iter()
            .take(8)
            .map(|(i, r)| format!("#{i}: {r}"))
            .collect();
        why.push_str(&format!(
            "; {} attestation(s) not counted ({})",
            tally.rejected.len(),
            reasons.join("; ")
        ));
    }
    Err(Error::NotAttested(why))
}
