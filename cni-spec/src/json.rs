//! JSON decoding with CNI error codes: malformed input is code 6 with its position.

use serde::de::DeserializeOwned;

use crate::error::{Code, Error};

/// Decodes `bytes`; a syntax error is code 6 with line and column, a missing or wrong
/// field is code 7 naming the field (its path, e.g. `ipam.type`, or serde's message for a
/// missing one).
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| path_error(&e))?;
    de.end().map_err(|e| decode_error(&e, ""))?;
    Ok(value)
}

/// Decodes an already-parsed value, with the same error mapping.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| path_error(&e))
}

fn path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    // The root's path is "."; serde's own message names a missing field.
    let field = if path == "." { "" } else { path.as_str() };
    decode_error(e.inner(), field)
}

fn decode_error(e: &serde_json::Error, field: &str) -> Error {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data if field.is_empty() => {
            Error::new(Code::InvalidConfig, format!("invalid network config: {e}"))
        }
        Category::Data => Error::invalid_config(field, e),
        Category::Io => Error::new(Code::IoFailure, format!("reading JSON: {e}")),
        Category::Syntax | Category::Eof => Error::new(
            Code::DecodingFailure,
            format!("malformed JSON at line {} column {}: {e}", e.line(), e.column()),
        ),
    }
}
