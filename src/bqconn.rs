//! BigQuery access shared by the source and the sink: credentials and endpoints.
//!
//! One token source serves both gcp-bigquery-client and the raw multipart upload
//! the sink's load jobs need (the crate has no upload API, and its own
//! authenticators cannot be reached from outside it): application default
//! credentials (on GKE, Workload Identity through the metadata server;
//! elsewhere `GOOGLE_APPLICATION_CREDENTIALS`), a service-account key file, or,
//! for an emulator, none.

use std::path::Path;
use std::sync::Arc;

use gcp_bigquery_client::Client;
use gcp_bigquery_client::client_builder::ClientBuilder;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::yup_oauth2::authenticator::{
    ApplicationDefaultCredentialsTypes, DefaultAuthenticator,
};
use gcp_bigquery_client::yup_oauth2::{
    ApplicationDefaultCredentialsAuthenticator, ApplicationDefaultCredentialsFlowOpts,
    ServiceAccountAuthenticator, read_service_account_key,
};

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const GOOGLE: &str = "https://bigquery.googleapis.com";

/// Where requests go and how they are authorized.
#[derive(Clone)]
pub struct Access {
    auth: Auth,
    /// `https://bigquery.googleapis.com`, or the emulator's address.
    endpoint: String,
}

#[derive(Clone)]
enum Auth {
    /// An emulator accepts any token.
    Emulator,
    Google(Arc<DefaultAuthenticator>),
}

#[async_trait::async_trait]
impl gcp_bigquery_client::auth::Authenticator for Auth {
    async fn access_token(&self) -> Result<String, BQError> {
        match self {
            Auth::Emulator => Ok("emulator".into()),
            Auth::Google(auth) => auth
                .token(&[SCOPE])
                .await?
                .token()
                .map(str::to_string)
                .ok_or(BQError::NoToken),
        }
    }
}

impl Access {
    /// Credentials for `endpoint` (an emulator, no credentials) or Google (the
    /// key file, else application default credentials).
    pub async fn new(endpoint: Option<&str>, key_file: Option<&Path>) -> Result<Self, String> {
        let failed = |e: &dyn std::fmt::Display| format!("BigQuery credentials: {e}");
        let (auth, endpoint) = match (endpoint, key_file) {
            (Some(endpoint), _) => (Auth::Emulator, endpoint.trim_end_matches('/').to_string()),
            (None, Some(path)) => {
                let key = read_service_account_key(path)
                    .await
                    .map_err(|e| failed(&format!("{}: {e}", path.display())))?;
                let auth = ServiceAccountAuthenticator::builder(key)
                    .build()
                    .await
                    .map_err(|e| failed(&e))?;
                (Auth::Google(Arc::new(auth)), GOOGLE.to_string())
            }
            (None, None) => {
                let opts = ApplicationDefaultCredentialsFlowOpts::default();
                let auth = match ApplicationDefaultCredentialsAuthenticator::builder(opts).await {
                    ApplicationDefaultCredentialsTypes::InstanceMetadata(b) => b.build().await,
                    ApplicationDefaultCredentialsTypes::ServiceAccount(b) => b.build().await,
                }
                .map_err(|e| failed(&e))?;
                (Auth::Google(Arc::new(auth)), GOOGLE.to_string())
            }
        };
        Ok(Self { auth, endpoint })
    }

    pub async fn client(&self) -> Result<Client, String> {
        ClientBuilder::new()
            .with_v2_base_url(format!("{}/bigquery/v2", self.endpoint))
            .build_from_authenticator(Arc::new(self.auth.clone()))
            .await
            .map_err(|e| format!("BigQuery client: {e}"))
    }

    /// The bearer token for a request the client cannot make.
    pub async fn token(&self) -> Result<String, String> {
        use gcp_bigquery_client::auth::Authenticator;
        self.auth
            .access_token()
            .await
            .map_err(|e| format!("BigQuery credentials: {e}"))
    }

    /// The base of media uploads (`…/upload/bigquery/v2`).
    pub fn upload_base(&self) -> String {
        format!("{}/upload/bigquery/v2", self.endpoint)
    }
}
