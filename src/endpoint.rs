//! Where the broker is, as Cradle's own MQTT clients (the bus, the publishers) and the edge's
//! relayed connections reach it: the embedded rumqttd on loopback, or an external broker
//! cluster at `broker.url` (`mqtt://` or `mqtts://`, with credentials).
//!
//! One [`Endpoint`] builds every client's options and every relayed link, so TLS, the CA
//! and the broker's credentials are set in one place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;

/// The reading half of a link to the broker (a relayed connection's, from the edge).
pub(crate) type UpRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of a link to the broker.
pub(crate) type UpWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Errors turning `broker.url` and `broker.ca_file` into an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL does not parse.
    #[error("broker.url: {0}")]
    Url(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("broker.ca_file: {path}: {message}")]
    Ca { path: PathBuf, message: String },
    /// The TLS client cannot be built.
    #[error("broker.url: TLS: {0}")]
    Tls(String),
}

/// A parsed `broker.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (1883 or 8883 when the URL names none).
    pub port: u16,
    /// The broker's username and password, percent-decoded.
    pub login: Option<(String, String)>,
}

impl BrokerUrl {
    /// Parses `mqtt://[user[:password]@]host[:port]` or `mqtts://…`; the message of an error
    /// says what is wrong without repeating the password.
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "scheme `{other}` is not supported: use mqtt://host:port or mqtts://host:port"
                ))
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err("names no host".to_string()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err("must not have a path or query: mqtt://host:port".to_string());
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let login = if url.username().is_empty() {
            None
        } else {
            Some((
                percent_decode(url.username()),
                percent_decode(url.password().unwrap_or("")),
            ))
        };
        Ok(BrokerUrl {
            tls,
            host,
            port,
            login,
        })
    }
}

/// Decodes `%XX` escapes (a URL's user and password); anything malformed stays as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to reach the broker.
#[derive(Clone)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Username and password every Cradle connection presents to the broker.
    pub login: Option<(String, String)>,
    /// TLS client configuration (`mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// An external broker (not the embedded rumqttd).
    pub external: bool,
}

impl std::fmt::Display for Endpoint {
    /// The URL without credentials, for logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// The embedded broker's loopback listener.
    pub fn embedded(addr: SocketAddr) -> Endpoint {
        Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            login: None,
            tls: None,
            external: false,
        }
    }

    /// An external broker at `url`, verified against `ca_file` (or the Mozilla roots).
    pub fn external(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, EndpointError> {
        let parsed = BrokerUrl::parse(url).map_err(EndpointError::Url)?;
        let tls = if parsed.tls {
            Some(tls_config(ca_file)?)
        } else {
            None
        };
        Ok(Endpoint {
            host: parsed.host,
            port: parsed.port,
            login: parsed.login,
            tls,
            external: true,
        })
    }

    /// Options of a Cradle client with id `client_id`: address, credentials and transport.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some((user, password)) = &self.login {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(transport) = self.tls_transport() {
            options.set_transport(transport);
        }
        options
    }

    /// [`Endpoint::options`] for an MQTT 5 client.
    pub(crate) fn options_v5(&self, client_id: &str) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some((user, password)) = &self.login {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(transport) = self.tls_transport() {
            options.set_transport(transport);
        }
        options
    }

    /// The TLS transport of a Cradle client (`mqtts://`), for either protocol's options.
    fn tls_transport(&self) -> Option<Transport> {
        let tls = self.tls.as_ref()?;
        Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )))
    }

    /// Opens one byte stream to the broker (TCP, or TLS over TCP) for a relayed connection.
    pub async fn open(&self) -> std::io::Result<(UpRead, UpWrite)> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => {
                let (rd, wr) = tcp.into_split();
                Ok((Box::new(rd), Box::new(wr)))
            }
            Some(config) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                let (rd, wr) = tokio::io::split(stream);
                Ok((Box::new(rd), Box::new(wr)))
            }
        }
    }
}

/// A TLS client configuration (ring provider, the one already in the tree) trusting the
/// certificates of `ca_file`, or the Mozilla roots.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, EndpointError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_error = |message: String| EndpointError::Ca {
                path: path.to_path_buf(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".to_string()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EndpointError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports_and_decoded_credentials() {
        let u = BrokerUrl::parse("mqtt://broker.internal").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "broker.internal", 1883)
        );
        assert_eq!(u.login, None);
        let u = BrokerUrl::parse("mqtts://cradle:p%40ss@10.0.0.5").unwrap();
        assert_eq!((u.tls, u.port), (true, 8883));
        assert_eq!(u.login, Some(("cradle".into(), "p@ss".into())));
        let u = BrokerUrl::parse("mqtt://a+b:c%2Bd%@h").unwrap();
        assert_eq!(u.login, Some(("a+b".into(), "c+d%".into())));
        let u = BrokerUrl::parse("mqtt://[::1]:1999").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        let err = BrokerUrl::parse("http://u:secret@h:1").unwrap_err();
        assert!(err.contains("scheme"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(BrokerUrl::parse("mqtt://h:1/path").is_err());
        assert!(BrokerUrl::parse("nonsense").is_err());
    }

    #[test]
    fn the_display_form_hides_credentials() {
        let e = Endpoint::external("mqtt://u:secret@h:1884", None).unwrap();
        assert_eq!(e.to_string(), "mqtt://h:1884");
        assert_eq!(e.login, Some(("u".into(), "secret".into())));
    }

    #[test]
    fn a_missing_ca_file_names_the_key() {
        let err = Endpoint::external("mqtts://h", Some(Path::new("/nonexistent/ca.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("broker.ca_file"), "{err}");
    }
}
