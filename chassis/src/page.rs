//! Cursor pagination shared by every list endpoint: `?limit=` (default 50, max 200) and
//! `?cursor=`, answered as `{"items": [...], "next_cursor": "..." | null}`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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
    pub cursor: Option<String>,
}

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

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).ok()?;
    let key = String::from_utf8(bytes).ok()?;
    (!key.is_empty()).then_some(key)
}

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
        let bad = PageParams {
            limit: None,
            cursor: Some("***".into()),
        };
        assert_eq!(bad.validate(), Err(PageError::Cursor));
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
