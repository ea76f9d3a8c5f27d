//! Mesh identities.
//!
//! Every node of a mesh proves who it is with a certificate: a domain's identity is the DNS name
//! in its certificate's subject alternative names, and every certificate chains to the mesh's CA.
//! No shared secret ever sits in a config file. This crate makes a development CA and issues
//! node certificates from it (`fedmesh certs init` / `fedmesh certs issue NAME`), and reads the
//! names back out of a certificate, which is how a node learns who is calling it.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! fedmesh_tls::init_ca(dir.path()).unwrap();
//! let issued = fedmesh_tls::issue(dir.path(), "retail").unwrap();
//! let pem = std::fs::read_to_string(&issued.certificate).unwrap();
//! assert_eq!(fedmesh_tls::names(&pem).unwrap(), vec!["retail"]);
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// File names inside a mesh folder.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// Errors of making and reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} already holds a mesh CA; remove it first to start a new mesh (every issued certificate would stop being trusted)"
    )]
    CaExists { path: PathBuf },
    #[error("no mesh CA in {dir}: run `fedmesh certs init --dir {dir}` first")]
    NoCa { dir: PathBuf },
    #[error(
        "{path} already exists: a certificate for `{name}` was issued before; remove {path} and its key to issue a new one"
    )]
    Issued { name: String, path: PathBuf },
    #[error(
        "`{0}` is not a valid node name: use lowercase letters, digits and `-`, starting with a letter"
    )]
    BadName(String),
    #[error("certificate error: {0}")]
    Certificate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

/// Paths of an issued certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// Creates a development CA in `dir` (`ca.pem`, `ca.key`); refuses to replace an existing one.
pub fn init_ca(dir: &Path) -> Result<Issued, TlsError> {
    let certificate = dir.join(CA_CERT);
    let key = dir.join(CA_KEY);
    if certificate.exists() || key.exists() {
        return Err(TlsError::CaExists { path: certificate });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_pair = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fedmesh development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key_pair).map_err(cert_err)?;
    write_private(&key, &key_pair.serialize_pem())?;
    std::fs::write(&certificate, cert.pem()).map_err(io(&certificate))?;
    Ok(Issued { certificate, key })
}

/// Issues a certificate for node `name` (its subject alternative name, for both server and
/// client authentication), signed by the CA in `dir`; writes `NAME.pem` and `NAME.key`.
pub fn issue(dir: &Path, name: &str) -> Result<Issued, TlsError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63;
    if !valid {
        return Err(TlsError::BadName(name.to_string()));
    }
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(TlsError::NoCa {
            dir: dir.to_path_buf(),
        });
    }
    let ca_pem = std::fs::read_to_string(&ca_cert_path).map_err(io(&ca_cert_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_err)?;

    let key_pair = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let certificate = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    if certificate.exists() || key.exists() {
        return Err(TlsError::Issued {
            name: name.to_string(),
            path: certificate,
        });
    }
    let cert = params.signed_by(&key_pair, &issuer).map_err(cert_err)?;
    write_private(&key, &key_pair.serialize_pem())?;
    std::fs::write(&certificate, cert.pem()).map_err(io(&certificate))?;
    Ok(Issued { certificate, key })
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(pem.as_bytes()).map_err(io(path))
}

/// The DNS names (subject alternative names) of the first certificate in `pem`.
pub fn names(pem: &str) -> Result<Vec<String>, TlsError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    names_der(&pem.contents)
}

/// The DNS names of a DER certificate (what a TLS peer presented).
pub fn names_der(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(cert_err)?;
    let san = cert.subject_alternative_name().map_err(cert_err)?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Signs with a node's private key (`<name>.key`): how a party signs the records of its audit
/// log, so that a record it did not write cannot pass as its own.
pub struct Signer {
    key: KeyPair,
}

impl Signer {
    /// The key of `name` in the mesh folder `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let path = dir.join(format!("{name}.key"));
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        Ok(Self {
            key: KeyPair::from_pem(&pem).map_err(cert_err)?,
        })
    }

    /// An ECDSA P-256 signature (SHA-256, ASN.1) of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, TlsError> {
        use rcgen::SigningKey as _;
        self.key.sign(message).map_err(cert_err)
    }
}

/// Checks that `signature` of `message` was made with the key of the certificate in `pem`.
pub fn verify_signature(pem: &str, message: &[u8], signature: &[u8]) -> Result<(), TlsError> {
    let (_, cert_pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    let cert = cert_pem.parse_x509().map_err(cert_err)?;
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &cert.public_key().subject_public_key.data,
    );
    key.verify(message, signature).map_err(|_| {
        TlsError::Certificate("the signature was not made with this certificate's key".into())
    })
}

/// Checks that the certificate in `pem` is signed by the CA in `ca_pem`.
pub fn verify_signed_by(pem: &str, ca_pem: &str) -> Result<(), TlsError> {
    let (_, cert_pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(cert_err)?;
    let cert = cert_pem.parse_x509().map_err(cert_err)?;
    let ca = ca_pem.parse_x509().map_err(cert_err)?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| {
        TlsError::Certificate("the certificate is not signed by this mesh's CA".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn issued_certificates_name_their_node_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path()).unwrap();
        let node = issue(dir.path(), "fraud-prevention").unwrap();
        assert_eq!(
            names(&read(&node.certificate)).unwrap(),
            vec!["fraud-prevention"]
        );
        verify_signed_by(&read(&node.certificate), &read(&ca.certificate)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_signature_verifies_with_its_signers_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let retail = issue(dir.path(), "retail").unwrap();
        let digital = issue(dir.path(), "digital").unwrap();
        let signature = Signer::load(dir.path(), "retail")
            .unwrap()
            .sign(b"record 7")
            .unwrap();
        verify_signature(&read(&retail.certificate), b"record 7", &signature).unwrap();
        for (pem, message) in [
            (read(&retail.certificate), &b"record 8"[..]),
            (read(&digital.certificate), &b"record 7"[..]),
        ] {
            let e = verify_signature(&pem, message, &signature)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not made with this certificate's key"), "{e}");
        }
    }

    #[test]
    fn a_certificate_from_another_ca_does_not_verify() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ca_a = init_ca(a.path()).unwrap();
        init_ca(b.path()).unwrap();
        let stranger = issue(b.path(), "retail").unwrap();
        let e = verify_signed_by(&read(&stranger.certificate), &read(&ca_a.certificate))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed by this mesh's CA"), "{e}");
    }

    #[test]
    fn refuses_to_replace_a_ca_or_issue_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = issue(dir.path(), "retail").unwrap_err().to_string();
        assert!(e.contains("fedmesh certs init"), "{e}");
        init_ca(dir.path()).unwrap();
        let e = init_ca(dir.path()).unwrap_err().to_string();
        assert!(e.contains("already holds a mesh CA"), "{e}");
        let e = issue(dir.path(), "Bad Name").unwrap_err().to_string();
        assert!(e.contains("not a valid node name"), "{e}");
        // Issuing the same name twice would silently replace a key in use.
        issue(dir.path(), "retail").unwrap();
        let e = issue(dir.path(), "retail").unwrap_err().to_string();
        assert!(e.contains("retail.pem already exists"), "{e}");
    }
}
