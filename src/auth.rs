//! Password hashing with argon2id, off the async worker threads.
//!
//! Hashing is deliberately slow and memory-hungry, so it runs on tokio's
//! blocking pool with at most one job per core at a time: a login storm
//! queues instead of exhausting memory.

use crate::api::{ChatError, ErrorCode};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of nothing, verified against when the user does not exist so
    /// that "no such user" takes as long as "wrong password".
    dummy: Arc<str>,
}

impl Passwords {
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Passwords, String> {
        let params = Params::new(
            memory_kib.max(Params::MIN_M_COST),
            iterations.max(1),
            1,
            None,
        )
        .map_err(|e| format!("invalid argon2 settings: {e}"))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dummy = hash_blocking(&params, "chatd-dummy-password")
            .map_err(|e| format!("argon2 does not work here: {e}"))?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(cores)),
            dummy: dummy.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, ChatError> {
        let _permit = self.permits.acquire().await.map_err(|_| internal())?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|_| internal())?
            .map_err(|_| internal())
    }

    /// Whether `password` matches `hash`; with no hash, spend the same time
    /// and say no.
    pub async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && known
    }
}

fn internal() -> ChatError {
    ChatError::new(ErrorCode::Internal, "could not hash the password")
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let p = Passwords::new(256, 1).unwrap();
        let h = p.hash("secret".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains("secret"));
        assert!(p.verify("secret".into(), Some(h.clone())).await);
        assert!(!p.verify("wrong".into(), Some(h)).await);
        assert!(!p.verify("chatd-dummy-password".into(), None).await);
    }
}
