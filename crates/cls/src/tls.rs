//! The certificates of `cls up`: a certificate authority and a server certificate for `localhost`, `127.0.0.1`, `::1`
//! (and the listen address), made anew at every start like the admin token. kubectl sends credentials only over TLS,
//! so the kubeconfig points at `https://` and carries the authority; `CLS_HOME/ca.crt` is there for curl
//! (`--cacert`). Plain HTTP keeps working on the same port.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM texts of a fresh authority and of a server certificate it signed, with the server's key.
pub struct LocalCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl LocalCertificates {
    pub fn generate(listen: SocketAddr) -> anyhow::Result<LocalCertificates> {
        let mut authority = CertificateParams::new(Vec::<String>::new())?;
        authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        authority.distinguished_name.push(DnType::CommonName, "cls up local authority");
        authority.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let authority_key = KeyPair::generate()?;
        let ca_pem = authority.self_signed(&authority_key)?.pem();
        let issuer = Issuer::new(authority, authority_key);

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        let ip = listen.ip();
        if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
        let mut server = CertificateParams::new(names)?;
        server.distinguished_name.push(DnType::CommonName, "cls");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert_pem = server.signed_by(&key, &issuer)?.pem();
        Ok(LocalCertificates { ca_pem, cert_pem, key_pem: key.serialize_pem() })
    }

    /// Writes the authority to `home/ca.crt`.
    pub fn write_authority(&self, home: &Path) -> anyhow::Result<()> {
        let path = home.join("ca.crt");
        std::fs::write(&path, &self.ca_pem).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_certificate_loads_into_a_tls_server_configuration() {
        let certificates = LocalCertificates::generate("127.0.0.1:8080".parse().unwrap()).unwrap();
        assert!(certificates.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let config =
            cls_api::http::tls::server_config(certificates.cert_pem.as_bytes(), certificates.key_pem.as_bytes());
        assert!(config.is_ok(), "{:?}", config.err());
    }
}
