//! The cluster CA and the client certificates it signs, as kubeadm lays
//! them out: a CA named `kubernetes` (what `kube-root-ca.crt` publishes in
//! every namespace) and the API server's kubelet client certificate
//! `apiserver-kubelet-client` (CN `kube-apiserver-kubelet-client`, O
//! `system:masters`, client auth only), which kube-apiserver presents to
//! kubelets. Made once per server, on first use, in memory (ECDSA P-256).
//!
//! The server itself still speaks plain HTTP: these are for the kubelet
//! endpoints tests run (spillway's virtual node), not for the API.

/// What `kube-apiserver --kubelet-client-certificate` names (kubeadm).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
/// Its organization in kubeadm's layout: kube-apiserver's privileged group,
/// allowed everything before RBAC (so every kubelet authorizes it).
pub const KUBELET_CLIENT_ORG: &str = "system:masters";

/// A client certificate and its key.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate").finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// The chain and key for `rustls::ClientConfig::with_client_auth_cert`.
    pub fn rustls_pair(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        (
            vec![rustls::pki_types::CertificateDer::from(
                self.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
        )
    }
}

/// A CA that signs client certificates.
pub struct Pki {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn validity(p: &mut rcgen::CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(365);
}

impl Pki {
    /// A new CA whose subject CN is `common_name` (kubeadm: `kubernetes`).
    pub fn new(common_name: &str) -> Self {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("CA params: {e}"));
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut p);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("CA key: {e}"));
        let ca = p
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("CA certificate: {e}"));
        Self { ca, key }
    }

    /// The CA certificate (PEM), what `kube-root-ca.crt` holds as `ca.crt`.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A client-auth certificate for user `cn` in groups `orgs` (at most
    /// two: rcgen keeps one value per attribute type, so a second
    /// Organization is written as the same OID under a custom type).
    pub fn client_certificate(&self, cn: &str, orgs: &[&str]) -> ClientCertificate {
        assert!(orgs.len() <= 2, "at most two organizations");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap_or_else(|e| panic!("client params: {e}"));
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (i, o) in orgs.iter().enumerate() {
            let ty = if i == 0 {
                rcgen::DnType::OrganizationName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
            };
            p.distinguished_name.push(ty, *o);
        }
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut p);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("client key: {e}"));
        let cert = p
            .signed_by(&key, &self.ca, &self.key)
            .unwrap_or_else(|e| panic!("client certificate: {e}"));
        ClientCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}
