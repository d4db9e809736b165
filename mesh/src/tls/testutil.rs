//! Test helpers shared by the CA, TLS and certificate-manager tests: temporary directories, an
//! independently built root + intermediate PKI (so loading is tested against files this crate
//! did not write), and an in-memory TLS handshake.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::DuplexStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::ca::CertificateAuthority;
use crate::identity::Identity;

pub(crate) fn id(s: &str) -> Identity {
    Identity::parse(s).expect("test identity")
}

/// A directory removed on drop (also when the test panics).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ambit-{tag}-{}-{n}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Root → intermediate, built with rcgen directly and written in the `cacerts` layout with the
/// intermediate as signing cert, the way an operator's own PKI would hand it over.
pub(crate) struct TestPki {
    pub(crate) dir: TempDir,
    pub(crate) root: rcgen::Certificate,
    pub(crate) intermediate: rcgen::Certificate,
    intermediate_key: KeyPair,
}

impl TestPki {
    pub(crate) fn new(org: &str) -> Self {
        let root_key = KeyPair::generate().expect("root key");
        let mut root_params = ca_params(&format!("{org} root"));
        root_params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
        let root = root_params.self_signed(&root_key).expect("root");

        let intermediate_key = KeyPair::generate().expect("intermediate key");
        let mut int_params = ca_params(&format!("{org} intermediate"));
        int_params.use_authority_key_identifier_extension = true;
        let intermediate = int_params
            .signed_by(&intermediate_key, &root, &root_key)
            .expect("intermediate");

        let dir = TempDir::new("pki");
        let write = |name: &str, contents: String| {
            std::fs::write(dir.path().join(name), contents).expect("write cacerts file")
        };
        write("ca-cert.pem", intermediate.pem());
        write("ca-key.pem", intermediate_key.serialize_pem());
        write("root-cert.pem", root.pem());
        write(
            "cert-chain.pem",
            format!("{}{}", intermediate.pem(), root.pem()),
        );
        TestPki {
            dir,
            root,
            intermediate,
            intermediate_key,
        }
    }

    pub(crate) fn ca(&self) -> CertificateAuthority {
        CertificateAuthority::from_cacerts_dir(self.dir.path()).expect("load cacerts")
    }

    pub(crate) fn root_der(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    /// A leaf with arbitrary SANs, signed by the intermediate: for certificates the CA would
    /// never issue. Returns (chain leaf..root, key).
    pub(crate) fn raw_leaf(
        &self,
        sans: Vec<SanType>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.intermediate, &self.intermediate_key)
            .expect("leaf");
        let chain = vec![
            leaf.der().clone(),
            self.intermediate.der().clone(),
            self.root.der().clone(),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key)
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

pub(crate) type Handshake = (
    std::io::Result<client::TlsStream<DuplexStream>>,
    std::io::Result<server::TlsStream<DuplexStream>>,
);

/// Runs both sides of a handshake over an in-memory pipe. In TLS 1.3 the client finishes
/// before the server has judged its certificate, so client-certificate rejections show on the
/// server side's result.
pub(crate) async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Handshake {
    let (c, s) = tokio::io::duplex(64 * 1024);
    // HBONE dials by IP; rustls never sends an IP as SNI.
    let name = ServerName::IpAddress(Ipv4Addr::new(10, 0, 0, 1).into());
    tokio::join!(
        TlsConnector::from(client).connect(name, c),
        TlsAcceptor::from(server).accept(s)
    )
}

/// Sends a few bytes each way over an established connection.
pub(crate) async fn ping_pong(
    client: &mut client::TlsStream<DuplexStream>,
    server: &mut server::TlsStream<DuplexStream>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.write_all(b"ping").await.expect("client write");
    client.flush().await.expect("client flush");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("server read");
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.expect("server write");
    server.flush().await.expect("server flush");
    client.read_exact(&mut buf).await.expect("client read");
    assert_eq!(&buf, b"pong");
}
