//! Query parameters of list, delete and write requests.

use cls_core::Kind;
use cls_core::selector::{FieldSelector, LabelSelector};
use serde::Deserialize;

use super::error::ApiError;
use crate::store::read::supported_fields;
use crate::store::{ContinueToken, ListQuery};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub force: Option<String>,
}

impl Params {
    /// Parses a raw query string; kube-rs sends strings such as `?&limit=1`, which are fine.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|error| ApiError::bad_request(format!("invalid query parameters: {error}")))
    }

    pub fn force(&self) -> Result<bool, ApiError> {
        parse_bool("force", self.force.as_deref())
    }

    /// The list query these parameters describe.
    pub fn list_query(&self, kind: Kind) -> Result<ListQuery, ApiError> {
        let labels = LabelSelector::parse(self.label_selector.as_deref().unwrap_or_default())
            .map_err(|error| ApiError::bad_request(format!("unable to parse requirement: {error}")))?;
        let fields = FieldSelector::parse(self.field_selector.as_deref().unwrap_or_default(), supported_fields(kind))
            .map_err(|error| ApiError::bad_request(format!("field label not supported: {error}")))?;
        let limit = match self.limit.as_deref() {
            None | Some("") => None,
            Some(text) => Some(text.parse::<i64>().ok().filter(|limit| *limit >= 0).ok_or_else(|| {
                ApiError::bad_request(format!("invalid limit {text:?}: must be a non-negative integer"))
            })?),
        };
        let continue_after = match self.continue_token.as_deref() {
            None | Some("") => None,
            Some(token) => Some(ContinueToken::decode(token)?),
        };
        let namespace =
            if kind.namespaced() { self.namespace.clone().filter(|namespace| !namespace.is_empty()) } else { None };
        Ok(ListQuery {
            namespace,
            visible_namespaces: None,
            labels,
            fields,
            limit,
            continue_after,
            all: false,
            feed_cursor: None,
        })
    }
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("invalid {name} {other:?}: must be true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_style_query_strings_parse() {
        let params = Params::parse(Some("&limit=5&labelSelector=app%3Dweb")).unwrap();
        let query = params.list_query(Kind::Cluster).unwrap();
        assert_eq!(query.limit, Some(5));
        assert_eq!(query.labels.requirements.len(), 1);
    }

    #[test]
    fn bad_parameters_are_bad_requests() {
        for raw in ["limit=-1", "limit=x", "continue=%%%", "fieldSelector=spec.x%3D1", "labelSelector=a%20in"] {
            let result = Params::parse(Some(raw)).and_then(|params| params.list_query(Kind::Cluster));
            assert_eq!(result.unwrap_err().code, 400, "{raw}");
        }
        assert_eq!(Params::parse(Some("force=maybe")).unwrap().force().unwrap_err().code, 400);
    }
}
