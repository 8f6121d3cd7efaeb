//! PostgreSQL connections shared by the source and the sink: the DSN (a secret,
//! never logged or put in an error), optional verified TLS, and connecting with
//! retries and doubling delays.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};

use crate::config::settings::{PostgresConfig, TlsMode};

/// A failed database operation: what was being done, the server's message, and
/// whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub message: String,
    pub retryable: bool,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl PgError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// `e` while doing `what`. Connection failures and transient server states
    /// are retryable; SQL, permission and data errors are not.
    pub fn from_db(what: &str, e: &tokio_postgres::Error) -> Self {
        let retryable = match e.code() {
            None => true,
            Some(code) => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                        SqlState::LOCK_NOT_AVAILABLE,
                        SqlState::TOO_MANY_CONNECTIONS,
                    ]
                    .contains(code)
            }
        };
        let detail = match e.as_db_error() {
            Some(db) => {
                let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(hint) = db.hint() {
                    text.push_str(&format!("; hint: {hint}"));
                }
                text
            }
            // The source holds the I/O cause ("connection refused", "closed").
            None => match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        Self {
            message: format!("{what}: {detail}"),
            retryable,
        }
    }
}

/// A parsed connection setting with what may be shown of it.
#[derive(Clone)]
pub struct Target {
    config: Config,
    tls: TlsMode,
    ca_file: Option<std::path::PathBuf>,
    retries: u32,
    /// `user@host:port/dbname`, without the password: for logs and errors.
    pub display: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Target {
    pub fn new(pg: &PostgresConfig) -> Result<Self, PgError> {
        let mut config: Config = pg.dsn.expose().parse().map_err(|e| {
            PgError::new(format!(
                "invalid dsn: {}; write libpq `key=value` pairs (`host=db port=5432 user=app dbname=jobs`) or a `postgresql://user@host:port/dbname` URL",
                dsn_problem(&e, pg.dsn.expose())
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(pg.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("recpipe");
        }
        if pg.tls == TlsMode::VerifyFull {
            config.ssl_mode(SslMode::Require);
        }
        let display = describe(&config);
        Ok(Self {
            config,
            tls: pg.tls,
            ca_file: pg.ca_file.clone(),
            retries: pg.connect_retries,
            display,
        })
    }

    /// Connects, trying again after connection failures; the connection's I/O runs
    /// as a task on the current runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            match self.connect_once().await {
                Ok(client) => return Ok(client),
                Err(e) if e.retryable && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!(server = %self.display, attempt, error = %e, "cannot connect to PostgreSQL; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(&self) -> Result<Client, PgError> {
        match self.tls {
            TlsMode::Disable => self.connect_with(NoTls).await,
            TlsMode::VerifyFull => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
                self.connect_with(tls).await
            }
        }
    }

    async fn connect_with<T>(&self, tls: T) -> Result<Client, PgError>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) =
            self.config.connect(tls).await.map_err(|e| {
                PgError::from_db(&format!("cannot connect to {}", self.display), &e)
            })?;
        let server = self.display.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%server, error = %e, "PostgreSQL connection ended");
            }
        });
        // Server notices ("does not exist, skipping") would reach the logs
        // through the `log` bridge as noise.
        client
            .batch_execute("SET client_min_messages = warning")
            .await
            .map_err(|e| PgError::from_db("cannot configure the session", &e))?;
        Ok(client)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, PgError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                    PgError::new(format!("cannot read ca_file {}: {e}", path.display()))
                })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        PgError::new(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        PgError::new(format!("bad certificate in {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::new(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

fn describe(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("")
    )
}

/// Which part of a DSN the parser refused. tokio-postgres says only "invalid
/// connection string" at the top and names the option (`invalid value for
/// option `port``, `unknown option `hots``) in its cause. The parser may quote
/// part of the DSN, so the text is redacted.
fn dsn_problem(e: &tokio_postgres::Error, dsn: &str) -> String {
    let text = match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    let text = match text.as_str() {
        "invalid connection string: unexpected EOF" => {
            "invalid connection string: it ends inside a value (an unclosed quote?) or after a key without `=`".to_string()
        }
        _ => text,
    };
    redact(&text, dsn)
}

/// `text` with every occurrence of the secret, and of its password part, masked.
fn redact(text: &str, dsn: &str) -> String {
    let mut out = text.replace(dsn, "***");
    for part in dsn.split(|c: char| c.is_whitespace() || c == '&' || c == '?') {
        if let Some(pw) = part.strip_prefix("password=")
            && !pw.is_empty()
        {
            out = out.replace(pw, "***");
        }
    }
    if let Some(rest) = dsn.split_once("://").map(|(_, r)| r)
        && let Some((userinfo, _)) = rest.split_once('@')
        && let Some((_, pw)) = userinfo.split_once(':')
        && !pw.is_empty()
    {
        out = out.replace(pw, "***");
    }
    out
}

/// `"schema"."name"`, for identifiers already checked to be plain lowercase names.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("\"{schema}\".\"{name}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::Secret;

    fn config(dsn: &str) -> PostgresConfig {
        PostgresConfig {
            dsn: Secret::new(dsn),
            schema: "public".into(),
            tls: TlsMode::Disable,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            connect_retries: 0,
        }
    }

    #[test]
    fn the_display_form_has_no_password() {
        for dsn in [
            "host=db port=5433 user=app password=hunter2 dbname=jobs",
            "postgresql://app:hunter2@db:5433/jobs",
        ] {
            let target = Target::new(&config(dsn)).expect("valid dsn");
            assert_eq!(target.display, "postgres://app@db:5433/jobs");
        }
    }

    #[test]
    fn a_bad_dsn_error_hides_the_password() {
        let err =
            Target::new(&config("host=db password=hunter2 port=notaport")).expect_err("invalid");
        assert!(err.message.starts_with("invalid dsn"), "{err}");
        assert!(!err.message.contains("hunter2"), "{err}");
        // Which part is wrong, and what is accepted.
        assert!(
            err.message.contains("invalid value for option `port`"),
            "{err}"
        );
        assert!(err.message.contains("`key=value` pairs"), "{err}");
        let err = Target::new(&config("hots=db user=app")).expect_err("unknown key");
        assert!(err.message.contains("unknown option `hots`"), "{err}");
        assert_eq!(
            redact(
                "x postgresql://a:s3cret@h/d y s3cret",
                "postgresql://a:s3cret@h/d"
            ),
            "x *** y ***"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_retryable_error_naming_the_target() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let err = Target::new(&config(
            "host=127.0.0.1 port=1 user=app password=hunter2 dbname=x",
        ))
        .expect("valid")
        .connect()
        .await
        .expect_err("refused");
        assert!(err.retryable);
        assert!(
            err.message
                .starts_with("cannot connect to postgres://app@127.0.0.1:1/x"),
            "{err}"
        );
        assert!(!err.message.contains("hunter2"), "{err}");
    }
}
