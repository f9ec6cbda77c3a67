//! Envelope encryption of private keys: each key is sealed under its own AES-256-GCM data key,
//! and the data key is wrapped by a key-encryption key that comes from configuration, never
//! from the database. Both layers are bound to the key id, so sealed rows cannot be swapped.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::config::Kek;
use crate::crypto::keys::KeyError;

fn aead(key: &[u8]) -> Result<LessSafeKey, KeyError> {
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key)?))
}

/// `nonce || ciphertext || tag`, bound to the key id through the AAD so rows cannot be swapped.
fn seal(key: &[u8], kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce)?;
    let mut buffer = plaintext.to_vec();
    aead(key)?.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(kid.as_bytes()),
        &mut buffer,
    )?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&buffer);
    buffer.iter_mut().for_each(|byte| *byte = 0);
    Ok(sealed)
}

fn open(key: &[u8], kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let unseal = || KeyError::Unseal {
        kid: kid.to_owned(),
    };
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or_else(unseal)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unseal())?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    let plaintext_len = aead(key)?
        .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buffer)
        .map_err(|_| unseal())?
        .len();
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

/// The envelope of one private key.
pub struct Envelope {
    pub sealed_private_key: Vec<u8>,
    pub wrapped_data_key: Vec<u8>,
    pub kek_id: String,
}

impl Envelope {
    pub(crate) fn seal(kek: &Kek, kid: &str, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let mut data_key = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(data_key.as_mut())?;
        Ok(Self {
            sealed_private_key: seal(data_key.as_ref(), kid, pkcs8)?,
            wrapped_data_key: seal(kek.key.expose_secret(), kid, data_key.as_ref())?,
            kek_id: kek.id.clone(),
        })
    }

    pub(crate) fn open(&self, keks: &[&Kek], kid: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let data_key = self.unwrap_data_key(keks, kid)?;
        open(&data_key, kid, &self.sealed_private_key)
    }

    /// The same sealed private key with its data key wrapped by `kek` instead; one of `keks`
    /// must unwrap it now.
    pub(crate) fn rewrapped(&self, keks: &[&Kek], kek: &Kek, kid: &str) -> Result<Self, KeyError> {
        let data_key = self.unwrap_data_key(keks, kid)?;
        Ok(Self {
            sealed_private_key: self.sealed_private_key.clone(),
            wrapped_data_key: seal(kek.key.expose_secret(), kid, &data_key)?,
            kek_id: kek.id.clone(),
        })
    }

    fn unwrap_data_key(&self, keks: &[&Kek], kid: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let kek = keks
            .iter()
            .find(|kek| kek.id == self.kek_id)
            .ok_or_else(|| KeyError::UnknownKek {
                kid: kid.to_owned(),
                kek_id: self.kek_id.clone(),
            })?;
        open(kek.key.expose_secret(), kid, &self.wrapped_data_key)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn kek(id: &str, byte: u8) -> Kek {
        Kek::parse(
            "keys.kek",
            id,
            &base64::engine::general_purpose::STANDARD.encode([byte; 32]),
        )
        .unwrap()
    }

    #[test]
    fn envelope_round_trips_and_is_bound_to_kid_and_kek() {
        let current = kek("k1", 7);
        let envelope = Envelope::seal(&current, "kid-1", b"private").unwrap();
        assert_eq!(
            envelope.open(&[&current], "kid-1").unwrap().as_slice(),
            b"private"
        );
        assert!(matches!(
            envelope.open(&[&current], "kid-2"),
            Err(KeyError::Unseal { .. })
        ));
        let impostor = kek("k1", 8);
        assert!(matches!(
            envelope.open(&[&impostor], "kid-1"),
            Err(KeyError::Unseal { .. })
        ));
        assert!(matches!(
            envelope.open(&[&kek("k2", 7)], "kid-1"),
            Err(KeyError::UnknownKek { .. })
        ));
    }
}
