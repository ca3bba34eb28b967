//! JSON decoding with CNI error codes: malformed input is code 6 with its position.

use serde::de::DeserializeOwned;

use crate::error::{Code, Error};

/// Decodes `bytes`; a syntax error is code 6 with line and column, a missing or wrong
/// field is code 7 naming the field (serde's message names it).
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| decode_error(&e))
}

/// Decodes an already-parsed value, with the same error mapping.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| decode_error(&e))
}

pub(crate) fn decode_error(e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => Error::new(Code::InvalidConfig, format!("invalid network config: {e}")),
        Category::Io => Error::new(Code::IoFailure, format!("reading JSON: {e}")),
        Category::Syntax | Category::Eof => Error::new(
            Code::DecodingFailure,
            format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()),
        ),
    }
}
