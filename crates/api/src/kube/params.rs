//! Query parameters of the Kubernetes API.

use serde::Deserialize;

use crate::http::error::ApiError;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub send_initial_events: Option<String>,
    pub include_object: Option<String>,
    pub dry_run: Option<String>,
    pub field_validation: Option<String>,
    pub field_manager: Option<String>,
}

impl KubeParams {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|error| ApiError::bad_request(format!("invalid query parameters: {error}")))
    }

    pub fn flag(value: Option<&str>, name: &str) -> Result<bool, ApiError> {
        match value {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!("invalid {name} {other:?}: must be true or false"))),
        }
    }

    pub fn watch(&self) -> Result<bool, ApiError> {
        Self::flag(self.watch.as_deref(), "watch")
    }

    /// `dryRun=All` (the only value Kubernetes knows).
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.dry_run.as_deref() {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request(format!("unsupported dryRun {other:?}: only \"All\" is supported")))
            }
        }
    }

    /// The thin REST parameters for the list part.
    pub fn list_params(&self) -> crate::http::query::Params {
        crate::http::query::Params {
            namespace: None,
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            limit: self.limit.clone(),
            continue_token: self.continue_token.clone(),
            force: None,
        }
    }
}
