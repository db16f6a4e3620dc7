//! TLS for clients (HTTPS and WSS on the web listener, chatd's protocol on
//! `--tls-listen`), from the operator's PEM certificate and key. The files
//! are read again on SIGHUP, so a renewed certificate is used without a
//! restart; connections already open keep the one they started with.
//!
//! `chatd init-tls DIR` writes a self-signed certificate for trying it out.
//! (The mesh has TLS of its own, with the cluster's CA: `mesh::tls`.)

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// The certificate in use, replaced by a reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The server side of client TLS.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a certificate chain and its key.
fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

impl Tls {
    pub fn new(cert: &Path, key: &Path) -> Result<Tls, String> {
        let current = Arc::new(Current(RwLock::new(load(cert, key)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Read the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = load(&self.cert, &self.key)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate in use (DER), for tests and logs.
    pub fn current_cert(&self) -> Vec<u8> {
        let c = self.current.0.read().unwrap_or_else(|e| e.into_inner());
        c.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

/// Write a self-signed certificate for `names` (DNS names or IP
/// addresses; localhost when none) to `DIR/cert.pem` and `DIR/key.pem`.
/// Browsers warn about it: it is for trying TLS out, not for the Internet.
pub fn init_tls(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let names = if names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        names.to_vec()
    };
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| format!("names {names:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("chatd ({})", names[0]));
    let now = time_now_ymd();
    params.not_before = rcgen::date_time_ymd(now.0 - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(now.0 + 1, now.1, 1);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("certificate: {e}"))?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    for p in [&c, &k] {
        if p.exists() {
            return Err(format!(
                "{} exists already; not overwriting it",
                p.display()
            ));
        }
    }
    std::fs::write(&c, cert.pem()).map_err(|e| format!("cannot write {}: {e}", c.display()))?;
    crate::os::write_private(&k, &key.serialize_pem())
        .map_err(|e| format!("cannot write {}: {e}", k.display()))?;
    Ok((c, k))
}

/// This year and month (UTC), from the system clock.
fn time_now_ymd() -> (i32, u8) {
    let days = (crate::ids::wall_millis() / 86_400_000) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_year_is_plausible() {
        let (y, m) = time_now_ymd();
        assert!(
            (2024..2200).contains(&y) && (1..=12).contains(&m),
            "{y}-{m}"
        );
    }

    #[test]
    fn a_made_certificate_loads_and_a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = init_tls(dir.path(), &[]).unwrap();
        let tls = Tls::new(&c, &k).unwrap();
        let first = tls.current_cert();
        assert!(!first.is_empty());
        assert!(init_tls(dir.path(), &[]).is_err(), "never overwrites");
        let other = tempfile::tempdir().unwrap();
        let (c2, k2) = init_tls(other.path(), &["chat.example".into()]).unwrap();
        let err = Tls::new(&c, &k2).err().unwrap();
        assert!(err.contains("does not belong"), "{err}");
        // A reload with broken files keeps the old certificate.
        std::fs::write(&c, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(tls.current_cert(), first);
        std::fs::copy(&c2, &c).unwrap();
        std::fs::copy(&k2, &k).unwrap();
        tls.reload().unwrap();
        assert_ne!(tls.current_cert(), first);
    }
}
