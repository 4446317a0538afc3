//! The local broker's certificates: a CA made per stack, the broker's serving certificates
//! (one for its own names, one for a name that is not its own, to test hostname checks),
//! and client certificates signed on demand for mutual TLS.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Error, Result};

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// The broker's PKI, written into a directory of its own.
#[derive(Debug, Clone)]
pub struct KafkaPki {
    dir: PathBuf,
    ca_pem: String,
    ca_key_pem: String,
    ca_params: CertificateParams,
}

fn err(e: rcgen::Error) -> Error {
    Error::Pki(e.to_string())
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A CA of its own: a certificate no broker of the kit presents (an untrusted CA).
pub fn unrelated_ca() -> Result<String> {
    let key = KeyPair::generate().map_err(err)?;
    Ok(ca_params("some-other-ca")
        .self_signed(&key)
        .map_err(err)?
        .pem())
}

impl KafkaPki {
    /// Makes a CA and the broker's certificates and writes them to `dir`: `ca.crt`,
    /// `broker.pem` (key and chain, for `127.0.0.1` and `localhost`) and `wrong-name.pem`
    /// (for `kafka.invalid` only).
    pub fn write(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the PKI dir", e))?;
        let ca_key = KeyPair::generate().map_err(err)?;
        let params = ca_params("weir-kafka-test-ca");
        let ca_pem = params.self_signed(&ca_key).map_err(err)?.pem();
        let pki = Self {
            dir: dir.to_owned(),
            ca_pem,
            ca_key_pem: ca_key.serialize_pem(),
            ca_params: params,
        };
        pki.write_file("ca.crt", &pki.ca_pem)?;
        for (file, names, ip) in [
            ("broker.pem", vec!["localhost".to_owned()], true),
            ("wrong-name.pem", vec!["kafka.invalid".to_owned()], false),
        ] {
            let mut params = CertificateParams::new(names).map_err(err)?;
            if ip {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
            }
            params
                .distinguished_name
                .push(DnType::CommonName, "kafka-broker");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let signed = pki.sign(params)?;
            // Kafka's PEM key store: the private key, then the certificate chain.
            pki.write_file(
                file,
                &format!("{}{}{}", signed.key_pem, signed.cert_pem, pki.ca_pem),
            )?;
        }
        Ok(pki)
    }

    fn write_file(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    fn sign(&self, params: CertificateParams) -> Result<CertifiedKey> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(err)?;
        let issuer = Issuer::new(self.ca_params.clone(), ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate every broker certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The path of `ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The path of a file the PKI wrote.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A client certificate with common name `cn` (the broker maps it to principal
    /// `User:<cn>`), signed by the CA.
    pub fn client_cert(&self, cn: &str) -> Result<CertifiedKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Like [`KafkaPki::client_cert`], but valid only in January 2020: expired.
    pub fn expired_client_cert(&self, cn: &str) -> Result<CertifiedKey> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 2, 1);
        self.sign(params)
    }

    /// Like [`KafkaPki::client_cert`], written to `<dir>/<cn>.crt` and `<dir>/<cn>.key`;
    /// returns both paths.
    pub fn client_cert_files(&self, cn: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let c = self.client_cert(cn)?;
        Self::write_pair(c, cn, dir)
    }

    /// [`KafkaPki::expired_client_cert`] written as [`KafkaPki::client_cert_files`] does.
    pub fn expired_client_cert_files(&self, cn: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let c = self.expired_client_cert(cn)?;
        Self::write_pair(c, &format!("{cn}-expired"), dir)
    }

    fn write_pair(c: CertifiedKey, cn: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
        for (path, text) in [(&cert, &c.cert_pem), (&key, &c.key_pem)] {
            std::fs::write(path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok((cert, key))
    }
}
