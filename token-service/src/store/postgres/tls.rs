//! TLS to PostgreSQL through rustls (the crypto and verifier reqwest already builds): the
//! driver's connector traits over `tokio-rustls`, verifying the server's certificate for the
//! URL's host.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pg_url::PgTls;

/// The connector a pool opens connections with.
#[derive(Clone)]
pub(super) enum Connector {
    Plain,
    Rustls(Arc<rustls::ClientConfig>),
}

impl Connector {
    pub(super) fn new(tls: &PgTls) -> anyhow::Result<Self> {
        let PgTls::Verify { root_cert } = tls else {
            return Ok(Connector::Plain);
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS to PostgreSQL")?;
        let config = match root_cert {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("sslrootcert: cannot read {}", path.display()))?
                {
                    let cert = cert
                        .with_context(|| format!("sslrootcert: {} is not PEM", path.display()))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("sslrootcert: {}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(builder)
                .context("TLS to PostgreSQL: the system's certificate roots")?
                .with_no_client_auth(),
        };
        Ok(Connector::Rustls(Arc::new(config)))
    }
}

#[derive(Clone)]
pub(super) struct RustlsConnect(pub(super) Arc<rustls::ClientConfig>);

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnector> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnector {
            config: self.0.clone(),
            name,
        })
    }
}

pub(super) struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnector {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

pub(super) struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: the certificate check already ties the session
        // to the server.
        ChannelBinding::none()
    }
}
