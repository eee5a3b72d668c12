//! Request bodies: JSON or YAML documents and patches, read under the body limit, with every rejection a `Status`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use serde_json::Value;

use super::error::ApiError;

/// Request bodies larger than this get 413.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The media type of a body, parameters dropped.
pub fn media_type(content_type: Option<&str>) -> String {
    content_type.unwrap_or("application/json").split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn is_yaml(media_type: &str) -> bool {
    matches!(media_type, "application/yaml" | "application/x-yaml" | "text/yaml" | "application/apply-patch+yaml")
}

/// Parses a JSON or YAML document. NUL characters are refused: PostgreSQL cannot store them in JSON.
pub fn parse_document(media_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    let document = if is_yaml(media_type) {
        serde_norway::from_slice::<Value>(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding YAML body: {error}")))?
    } else {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding JSON body: {error}")))?
    };
    if contains_nul(&document) {
        return Err(ApiError::bad_request("strings in the request body must not contain NUL (\\u0000)"));
    }
    Ok(document)
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(fields) => fields.iter().any(|(key, field)| key.contains('\0') || contains_nul(field)),
        _ => false,
    }
}

/// A request body, read whole (413 beyond [`MAX_BODY_BYTES`]), with its media type.
pub struct Body {
    pub media_type: String,
    pub bytes: Bytes,
}

impl Body {
    pub fn document(&self) -> Result<Value, ApiError> {
        parse_document(&self.media_type, &self.bytes)
    }
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media_type = media_type(request.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()));
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::bad_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        Ok(Body { media_type, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_number_re_encodes_to_text_that_decodes_to_the_same_number() {
        // found by the manifest fuzz target: without serde_json's float_roundtrip this integer decoded to
        // 1.2345638901234567e46, whose text decoded to 1.234563890123457e46
        for text in ["12345638901234567890123456712345678901234567890", "1.2345638901234567e46", "0.1"] {
            let decoded = parse_document("application/json", text.as_bytes()).unwrap();
            let again = parse_document("application/json", decoded.to_string().as_bytes()).unwrap();
            assert_eq!(again, decoded, "{text}");
        }
    }
}
