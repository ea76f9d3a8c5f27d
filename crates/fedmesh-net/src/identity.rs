//! A node's TLS identity in the mesh: the mesh CA, and the node's own certificate and key.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status};

use crate::NetError;

/// What a node presents and trusts.
#[derive(Clone)]
pub struct MeshIdentity {
    /// The node's name: the DNS name in its certificate.
    pub name: String,
    ca: Certificate,
    identity: Identity,
    /// The PEM texts, for the server's own TLS acceptor.
    pem: std::sync::Arc<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

impl MeshIdentity {
    /// Reads `ca.pem`, `NAME.pem` and `NAME.key` from a mesh folder (as `fedmesh certs` writes
    /// them).
    pub fn load(dir: &Path, name: &str) -> Result<Self, NetError> {
        let read = |file: String| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => NetError::NoCertificate {
                    path,
                    name: name.to_string(),
                    dir: dir.to_path_buf(),
                },
                _ => NetError::Io { path, error },
            })
        };
        Self::from_pem(
            name,
            &read(fedmesh_tls::CA_CERT.to_string())?,
            &read(format!("{name}.pem"))?,
            &read(format!("{name}.key"))?,
        )
    }

    /// Builds an identity from PEM text; checks that the certificate carries `name`.
    pub fn from_pem(name: &str, ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, NetError> {
        let names = fedmesh_tls::names(&String::from_utf8_lossy(cert))?;
        if !names.iter().any(|n| n == name) {
            return Err(NetError::WrongName {
                name: name.to_string(),
                names,
            });
        }
        Ok(Self {
            name: name.to_string(),
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            pem: std::sync::Arc::new((ca.to_vec(), cert.to_vec(), key.to_vec())),
        })
    }

    /// Server side, for [`crate::server::tls_incoming`]: present this node's certificate,
    /// require a client certificate from the mesh CA, speak HTTP/2.
    pub fn rustls_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, NetError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            NetError::Tls(fedmesh_tls::TlsError::Certificate(format!(
                "{what} of `{}`: {e}",
                self.name
            )))
        };
        let (ca, cert, key) = &*self.pem;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            let ca = ca.map_err(|e| bad("the mesh CA", &e))?;
            roots.add(ca).map_err(|e| bad("the mesh CA", &e))?;
        }
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("the key", &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad("the client verifier", &e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("the TLS versions", &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad("the certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// Client side: present this node's certificate, and accept the server only if it chains to
    /// the mesh CA *and* is named `peer`.
    pub fn client_config(&self, peer: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer)
    }
}

/// The caller's names from its client certificate (the TLS layer already checked the chain).
pub fn peer_names<T>(request: &Request<T>) -> Vec<String> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|c| fedmesh_tls::names_der(c.as_ref())))
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// Refuses a caller whose certificate does not name one of `allowed`.
pub fn authorize<T>(request: &Request<T>, allowed: &[String]) -> Result<String, Status> {
    let names = peer_names(request);
    match names.iter().find(|n| allowed.contains(n)) {
        Some(name) => Ok(name.clone()),
        None => {
            let shown = if names.is_empty() {
                "no certificate name".to_string()
            } else {
                names.join(", ")
            };
            let at = request
                .remote_addr()
                .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
            tracing::warn!(
                "refused a caller at {at} presenting {shown}: only {allowed:?} may call"
            );
            Err(Status::permission_denied(format!(
                "this node accepts only {allowed:?}; the caller's certificate names {shown}"
            )))
        }
    }
}

/// Signs audit records with `name`'s key in the mesh folder `mesh`: a node's and governance's
/// audit logs are signed by the identity they serve under.
pub fn audit_signer(mesh: &Path, name: &str) -> Result<fedmesh_audit::Signer, NetError> {
    let key = fedmesh_tls::Signer::load(mesh, name)?;
    Ok(Box::new(move |hash| {
        key.sign(hash).map_err(|e| e.to_string())
    }))
}
