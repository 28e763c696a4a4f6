//! Cursor pagination shared by every list endpoint: `?limit=` (default 50, max 200) and
//! `?cursor=`, answered as `{"items": [...], "next_cursor": "..." | null}`.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The query parameters of a list endpoint, as received.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(
        min_length = 2,
        pattern = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"
    )]
    pub cursor: Option<String>,
}

/// The schema of `?cursor=`: what [`encode_cursor`] makes, unpadded base64url. Every
/// string of this form names a position in a list, so none is refused.
pub const CURSOR_PATTERN: &str = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$";

/// A validated page request: the limit and the key after which the page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<String>,
}

/// Why page parameters were refused; the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit: must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("cursor: not a cursor this API returned")]
    Cursor,
}

impl crate::problem::ProblemCode for PageError {
    fn status(&self) -> u16 {
        422
    }

    fn code(&self) -> &'static str {
        crate::problem::codes::VALIDATION_FAILED
    }
}

impl PageParams {
    pub fn validate(&self) -> Result<PageRequest, PageError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(PageError::Limit);
        }
        let after = match &self.cursor {
            None => None,
            Some(cursor) => Some(decode_cursor(cursor).ok_or(PageError::Cursor)?),
        };
        Ok(PageRequest { limit, after })
    }
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in key order: the extra row only
    /// tells that a next page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, key_of: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode_cursor(&key_of(last)))
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Cursors are opaque to clients so that the key behind them can change.
pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// A cursor names the key after which a page starts. One this API did not make still
/// names a position (keys compare as text), so any well-formed one is taken: bytes that
/// are not UTF-8, or are NUL (which PostgreSQL text cannot hold), become U+FFFD.
fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = LENIENT_URL_SAFE_NO_PAD.decode(cursor.as_bytes()).ok()?;
    let key = String::from_utf8_lossy(&bytes).replace('\0', "\u{fffd}");
    (!key.is_empty()).then_some(key)
}

/// Unpadded base64url that ignores the unused bits of the last character, so that every
/// string matching [`CURSOR_PATTERN`] decodes.
const LENIENT_URL_SAFE_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limit_is_50_and_200_is_the_maximum() {
        assert_eq!(PageParams::default().validate().map(|r| r.limit), Ok(50));
        let at_max = PageParams {
            limit: Some(200),
            cursor: None,
        };
        assert_eq!(at_max.validate().map(|r| r.limit), Ok(200));
        let over = PageParams {
            limit: Some(201),
            cursor: None,
        };
        assert_eq!(over.validate(), Err(PageError::Limit));
        let zero = PageParams {
            limit: Some(0),
            cursor: None,
        };
        assert_eq!(zero.validate(), Err(PageError::Limit));
    }

    #[test]
    fn cursor_round_trips_and_garbage_is_refused() {
        let cursor = encode_cursor("0193-abc");
        let params = PageParams {
            limit: None,
            cursor: Some(cursor),
        };
        assert_eq!(
            params.validate().map(|r| r.after),
            Ok(Some("0193-abc".into()))
        );
        for bad in ["***", "a", "abcde", ""] {
            let params = PageParams {
                limit: None,
                cursor: Some(bad.into()),
            };
            assert_eq!(params.validate(), Err(PageError::Cursor), "{bad:?}");
        }
    }

    #[test]
    fn every_cursor_of_the_documented_form_names_a_position() {
        let pattern = regex_lite::Regex::new(CURSOR_PATTERN).expect("compiles");
        // Unused trailing bits ("AB" is 0x00 plus 4 bits), bytes that are not UTF-8 ("_w"),
        // a NUL byte ("AA") and a long one.
        for cursor in ["AB", "_w", "AA", "AAAA", "zzz", "abcdefgh-_"] {
            assert!(pattern.is_match(cursor), "{cursor}");
            let params = PageParams {
                limit: None,
                cursor: Some(cursor.into()),
            };
            let after = params.validate().map(|r| r.after);
            assert!(
                matches!(&after, Ok(Some(key)) if !key.is_empty() && !key.contains('\0')),
                "{cursor}: {after:?}"
            );
        }
    }

    #[test]
    fn page_from_rows_sets_next_cursor_only_when_more_rows_exist() {
        let full = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(full.items, vec![1, 2]);
        assert_eq!(full.next_cursor, Some(encode_cursor("2")));
        let last = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
