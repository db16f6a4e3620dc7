//! Session tokens: how a client logs in again after a reconnect without
//! sending its password.
//!
//! A token is `<user>.<issued>.<secret>`: the user's id, the stamp of the
//! operation that issued it (which is also its key in the store), and 32
//! random bytes in unpadded base64url. Only the SHA-256 of the secret is
//! stored and replicated; the secret itself exists only in the reply that
//! hands it out. A secret of 256 random bits cannot be guessed, so a cheap
//! hash is enough (passwords need argon2 because people choose them).
//!
//! What makes a token stop working (see `apply` for how these merge):
//! its lifetime runs out; it is revoked by itself (`logout`, a kicked
//! session); every token of the user issued before some moment is revoked
//! (password change, ban, kick of the user, deletion); or the user has
//! more than [`KEEP_PER_USER`] newer ones.

use crate::ids::{Stamp, Uid};
use base64::Engine;

/// Tokens kept per user, newest first; an older one stops working.
pub const KEEP_PER_USER: usize = 32;

/// Longest token text accepted (ids, dots and 43 characters of secret).
pub const MAX_TOKEN_CHARS: usize = 96;

pub type TokenHash = [u8; 32];

/// A token a client presented, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    pub user: Uid,
    pub issued: Stamp,
    pub hash: TokenHash,
}

/// A new token: its text, for the client, and the hash, for the store.
pub struct Fresh {
    pub text: String,
    pub hash: TokenHash,
}

pub fn hash(secret: &[u8]) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new token for `user`, issued by the operation stamped `issued`.
pub fn fresh(user: Uid, issued: Stamp) -> Fresh {
    let secret: [u8; 32] = rand::random();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Fresh {
        text: format!("{}.{}.{}", user.0, issued.0, b64),
        hash: hash(&secret),
    }
}

/// Take a token apart; None when it is not one.
pub fn parse(text: &str) -> Option<Presented> {
    if text.len() > MAX_TOKEN_CHARS {
        return None;
    }
    let mut parts = text.split('.');
    let user = parts.next()?.parse::<u32>().ok()?;
    let issued = parts.next()?.parse::<u64>().ok()?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts.next()?)
        .ok()?;
    if parts.next().is_some() || secret.len() != 32 || user == 0 {
        return None;
    }
    Some(Presented {
        user: Uid(user),
        issued: Stamp(issued),
        hash: hash(&secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_parses_back_to_what_made_it() {
        let f = fresh(Uid(7), Stamp(123_456_789));
        let p = parse(&f.text).unwrap();
        assert_eq!(p.user, Uid(7));
        assert_eq!(p.issued, Stamp(123_456_789));
        assert_eq!(p.hash, f.hash);
        assert!(f.text.len() <= MAX_TOKEN_CHARS);
        // Another token's secret has another hash.
        assert_ne!(fresh(Uid(7), Stamp(123_456_789)).hash, f.hash);
    }

    #[test]
    fn what_is_not_a_token_is_refused() {
        let good = fresh(Uid(7), Stamp(5)).text;
        let secret = good.rsplit('.').next().unwrap();
        for bad in [
            "",
            "7",
            "7.5",
            "x.5.abc",
            &format!("0.5.{secret}"),
            &format!("7.5.{secret}.1"),
            &format!("7.5.{}", &secret[..20]),
            &format!("7.5.{secret}==="),
            &"9".repeat(200),
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
