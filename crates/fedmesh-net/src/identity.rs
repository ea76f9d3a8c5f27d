//! A node's TLS identity in the mesh: the mesh CA, and the node's own certificate and key.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::NetError;

/// What a node presents and trusts.
#[derive(Clone)]
pub struct MeshIdentity {
    /// The node's name: the DNS name in its certificate.
    pub name: String,
    ca: Certificate,
    identity: Identity,
}

impl MeshIdentity {
    /// Reads `ca.pem`, `NAME.pem` and `NAME.key` from a mesh folder (as `fedmesh certs` writes
    /// them).
    pub fn load(dir: &Path, name: &str) -> Result<Self, NetError> {
        let read = |file: String| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => NetError::Protocol(format!(
                    "no {} for `{name}`: make the mesh's certificates with `fedmesh certs init --dir {dir}` and `fedmesh certs issue {name} --dir {dir}`",
                    path.display(),
                    dir = dir.display()
                )),
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
            return Err(NetError::Protocol(format!(
                "the certificate given for `{name}` names {names:?}"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        })
    }

    /// Server side: present this node's certificate, require a client certificate from the
    /// mesh CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
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
