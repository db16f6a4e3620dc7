//! Cluster credentials and the QUIC endpoint's TLS set-up.
//!
//! `chatd init-cluster FILE` makes a cluster CA (certificate and private key,
//! one PEM file). A node given that file (`--cluster-key FILE`) at its first
//! start makes its own key and a certificate signed by the CA, naming its
//! node uuid, and keeps them in its data directory; later starts need only
//! those. Every connection between nodes is mutual TLS 1.3: each side must
//! present a certificate signed by the cluster CA, and each side checks that
//! the certificate names the node the hello claims to be.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every node certificate carries this DNS name; dialers ask for it.
pub const SERVER_NAME: &str = "chatd-node";
/// The mesh protocol name, agreed during the TLS handshake.
pub const ALPN: &[u8] = b"chatd-mesh/1";

const NODE_CN_PREFIX: &str = "chatd node ";

#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> TlsError + '_ {
    move |e| TlsError(format!("{what}: {e}"))
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    crate::os::write_private(path, contents)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

/// Create the cluster CA and write it (certificate, then key) to `path`.
pub fn init_cluster(path: &Path) -> Result<(), TlsError> {
    let key = KeyPair::generate().map_err(|e| err("key generation")(&e))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let id: u64 = rand::random();
    dn.push(DnType::CommonName, format!("chatd cluster CA {id:016x}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("CA certificate")(&e))?;
    write_private(path, &format!("{}{}", cert.pem(), key.serialize_pem()))
}

/// A node's own TLS identity.
pub struct NodeCreds {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

fn mesh_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh")
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
}

fn first_cert(bytes: &[u8], path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::pem_slice_iter(bytes)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError(format!("no certificate in {}", path.display())))
}

/// This node's credentials: from its data directory, or (first start) made
/// now from the cluster key file.
pub fn node_credentials(
    data_dir: &Path,
    uuid: &str,
    cluster_key: Option<&Path>,
) -> Result<NodeCreds, TlsError> {
    let dir = mesh_dir(data_dir);
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.crt"),
        dir.join("node.crt"),
        dir.join("node.key"),
    );
    if !cert_path.exists() {
        let Some(cluster_key) = cluster_key else {
            return Err(TlsError(format!(
                "this node has no cluster certificate yet: start it once with --cluster-key FILE \
                 (made by `chatd init-cluster FILE`); it keeps its own certificate in {}",
                dir.display()
            )));
        };
        issue_node_cert(&dir, uuid, cluster_key)?;
    }
    let ca = first_cert(&read(&ca_path)?, &ca_path)?;
    let cert = first_cert(&read(&cert_path)?, &cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| TlsError(format!("no private key in {}: {e}", key_path.display())))?;
    if cert_uuid(&cert).as_deref() != Some(uuid) {
        return Err(TlsError(format!(
            "{} belongs to another node (its uuid is not this node's)",
            cert_path.display()
        )));
    }
    Ok(NodeCreds { ca, cert, key })
}

fn issue_node_cert(dir: &Path, uuid: &str, cluster_key: &Path) -> Result<(), TlsError> {
    let bytes = read(cluster_key)?;
    let text = String::from_utf8_lossy(&bytes);
    let ca_key = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|k| KeyPair::try_from(&k).map_err(|e| e.to_string()))
        .map_err(|e| TlsError(format!("{}: no usable CA key: {e}", cluster_key.display())))?;
    let ca_der = first_cert(&bytes, cluster_key)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, &ca_key).map_err(|e| {
        TlsError(format!(
            "{}: not a CA certificate: {e}",
            cluster_key.display()
        ))
    })?;
    let node_key = KeyPair::generate().map_err(|e| err("key generation")(&e))?;
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(|e| err("certificate parameters")(&e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{NODE_CN_PREFIX}{uuid}"));
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let cert = params
        .signed_by(&node_key, &issuer)
        .map_err(|e| err("node certificate")(&e))?;
    // Keep the CA certificate, as it stands in the cluster key file.
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| TlsError(format!("{}: no CA certificate", cluster_key.display())))?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[begin..]
        .find(end_marker)
        .map(|e| begin + e + end_marker.len())
        .ok_or_else(|| TlsError(format!("{}: no CA certificate", cluster_key.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    write_private(&dir.join("ca.crt"), &format!("{}\n", &text[begin..end]))?;
    write_private(&dir.join("node.key"), &node_key.serialize_pem())?;
    write_private(&dir.join("node.crt"), &cert.pem())?;
    Ok(())
}

/// The node uuid a certificate names, if it is a chatd node certificate.
pub fn cert_uuid(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    cn.strip_prefix(NODE_CN_PREFIX).map(str::to_string)
}

/// The uuid in the certificate a connected peer presented.
pub fn peer_uuid(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(cert_uuid)
}

/// A QUIC endpoint that accepts and dials cluster peers, both sides
/// authenticated by the cluster CA.
pub fn endpoint(
    creds: &NodeCreds,
    listen: std::net::SocketAddr,
    peer_timeout: Duration,
) -> Result<quinn::Endpoint, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(creds.ca.clone())
        .map_err(|e| err("cluster CA")(&e))?;
    let roots = Arc::new(roots);

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| err("client verifier")(&e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("TLS")(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![creds.cert.clone()], creds.key.clone_key())
        .map_err(|e| err("node certificate")(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err("TLS")(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![creds.cert.clone()], creds.key.clone_key())
        .map_err(|e| err("node certificate")(&e))?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    // QUIC keep-alives and the idle timeout are the failure detector.
    transport.keep_alive_interval(Some((peer_timeout / 4).max(Duration::from_millis(100))));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(peer_timeout).map_err(|e| err("peer timeout")(&e))?,
    ));
    let transport = Arc::new(transport);

    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| err("QUIC server")(&e))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport.clone());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| err("QUIC client")(&e))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
    client_config.transport_config(transport);

    let mut endpoint = quinn::Endpoint::server(server_config, listen)
        .map_err(|e| TlsError(format!("cannot listen on {listen} (UDP): {e}")))?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node_and_need_the_cluster_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("cluster.key");
        init_cluster(&key).unwrap();
        let node_dir = dir.path().join("n1");
        let err = node_credentials(&node_dir, "abc", None).err().unwrap();
        assert!(err.0.contains("--cluster-key"), "{err}");
        let creds = node_credentials(&node_dir, "abc", Some(&key)).unwrap();
        assert_eq!(cert_uuid(&creds.cert).as_deref(), Some("abc"));
        // Later starts need no key file.
        node_credentials(&node_dir, "abc", None).unwrap();
        // Another node's certificate is not ours.
        assert!(node_credentials(&node_dir, "xyz", None).is_err());
        // The key file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
