//! Mutual TLS between client, scheduler and executors, from PEM files: each
//! process holds a certificate signed by the cluster's CA and trusts only
//! that CA, so a client or executor without such a certificate is refused at
//! the handshake, and traffic is encrypted.
//!
//! Ballista 55 leaves hooks on the client side only (a gRPC endpoint
//! override and `use_tls`); its scheduler and executor servers take no TLS
//! settings. So each server port gets a TLS front here: it accepts TLS with
//! a client certificate on the public address and forwards the decrypted
//! HTTP/2 to Ballista's own server on the loopback address, same port.
//! Every certificate names the DNS name [`DOMAIN`], which clients check,
//! whatever address they dialled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::{create_grpc_client_endpoint, GrpcClientConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Error;

/// The DNS name every cluster certificate carries.
pub const DOMAIN: &str = "fruits-cluster";
/// How long a peer has to complete its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Where a process's CA, certificate and key are (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// From `FRUITS_TLS_CA`, `FRUITS_TLS_CERT` and `FRUITS_TLS_KEY`: all
    /// three, or none (no TLS).
    pub fn from_env() -> Result<Option<Self>, Error> {
        let var = |name| std::env::var_os(name).map(PathBuf::from);
        match (var("FRUITS_TLS_CA"), var("FRUITS_TLS_CERT"), var("FRUITS_TLS_KEY")) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self { ca, cert, key })),
            (None, None, None) => Ok(None),
            _ => Err(Error::Tls(
                "set all three of FRUITS_TLS_CA, FRUITS_TLS_CERT and FRUITS_TLS_KEY, or none".into(),
            )),
        }
    }
}

/// A process's TLS identity, loaded and checked.
#[derive(Clone)]
pub struct Tls {
    /// Where it was read from, for messages.
    files: TlsFiles,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    server: Arc<rustls::ServerConfig>,
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Self, Error> {
        let (ca, cert, key) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
        let server =
            server_config(&ca, &cert, &key).map_err(|e| Error::Tls(format!("{}: {e}", files.cert.display())))?;
        Ok(Self {
            files: files.clone(),
            ca,
            cert,
            key,
            server: Arc::new(server),
        })
    }

    /// Rewrites every gRPC endpoint Ballista makes to `https://`, with this
    /// process's certificate and the cluster's CA.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(DOMAIN);
        Arc::new(move |endpoint| {
            let uri = endpoint.uri().to_string();
            let https = match uri.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => uri,
            };
            let endpoint = create_grpc_client_endpoint(https, Some(&GrpcClientConfig::default()))?;
            Ok(endpoint.tls_config(tls.clone())?)
        })
    }

    /// Binds `public` now (so that a taken port fails at start), then serves
    /// it in the background: TLS with a client certificate in, plain HTTP/2
    /// out to `inner`.
    pub async fn front(&self, public: SocketAddr, inner: SocketAddr) -> Result<(), Error> {
        let listener = TcpListener::bind(public)
            .await
            .map_err(|e| Error::Tls(format!("cannot listen on {public}: {e}")))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("TLS front on {public}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                tokio::spawn(forward(acceptor.clone(), tcp, peer, inner));
            }
        });
        Ok(())
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key's bytes.
        f.debug_struct("Tls")
            .field("cert", &self.files.cert)
            .finish_non_exhaustive()
    }
}

/// Where a Ballista server goes behind a TLS front on `listen`: 127.0.0.1,
/// same port (Ballista announces the ports it binds, so they must be the
/// fronts'). `listen` must therefore be another, specific address.
pub fn behind_front(listen: SocketAddr) -> Result<std::net::IpAddr, Error> {
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    if listen.ip() == loopback || listen.ip().is_unspecified() {
        return Err(Error::Tls(format!(
            "with TLS, --listen needs this machine's own address (not {}): Ballista's servers take 127.0.0.1 on the same ports behind the TLS fronts",
            listen.ip()
        )));
    }
    Ok(loopback)
}

/// One connection: the handshake (a peer without a certificate of the
/// cluster's CA is refused here), then bytes both ways until either side ends.
async fn forward(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, peer: SocketAddr, inner: SocketAddr) {
    let mut tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        // A bare TCP probe (the client's reachability check, the scheduler's
        // connectivity test) ends or speaks plain HTTP: not worth a warning.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string().contains("InvalidContentType") => {
            return tracing::debug!(%peer, "not a TLS client: {e}")
        }
        Ok(Err(e)) => return tracing::warn!(%peer, "TLS handshake refused: {e}"),
        Err(_) => return tracing::warn!(%peer, "TLS handshake timed out"),
    };
    let mut plain = match TcpStream::connect(inner).await {
        Ok(plain) => plain,
        Err(e) => return tracing::warn!(%inner, "cannot reach the server behind the TLS front: {e}"),
    };
    let _ = plain.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
}

/// A server that requires a client certificate signed by `ca` and speaks HTTP/2.
fn server_config(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots
            .add(c.map_err(|e| format!("the CA file: {e}"))?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the key file: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
