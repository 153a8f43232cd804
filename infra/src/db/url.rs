//! What `DATABASE_URL` says that tokio-postgres does not read itself: libpq's `sslmode` with all
//! of its values (tokio-postgres knows `disable`, `prefer` and `require` only) and
//! `sslrootcert`. Both forms libpq accepts are understood, a URL
//! (`postgres://user:password@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem`) and
//! keyword/value pairs (`host=db sslmode=verify-full sslrootcert='/etc/my ca.pem'`). The two
//! parameters are taken out and the rest is handed to tokio-postgres as written.
//!
//! The scanning follows tokio-postgres's own parser (`Config::from_str`), so that both agree on
//! where a parameter starts: a URL's query begins at the first `?` after the first `@`, and a
//! keyword/value string is `keyword = value` pairs with `'quoted values'` and backslash escapes.
//! Nothing here ever puts the string, or a piece of it, into an error message: it holds the
//! password.

use std::borrow::Cow;

/// `DATABASE_URL` split into what tokio-postgres reads and the TLS parameters it does not.
#[derive(Default)]
pub(super) struct Split {
    /// The connection string without `sslmode` and `sslrootcert`.
    pub(super) rest: String,
    /// `sslmode`, if given.
    pub(super) sslmode: Option<String>,
    /// `sslrootcert`, if given.
    pub(super) sslrootcert: Option<String>,
}

/// Why a connection string cannot be split. Says where, never what.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// A keyword/value string that is not `keyword=value` pairs.
    #[error("expected `keyword=value` pairs (after byte {0})")]
    Pairs(usize),
    /// A quoted value without its closing quote.
    #[error("a quoted value is not closed")]
    Unterminated,
    /// A percent-encoded parameter that is not UTF-8.
    #[error("a URL parameter is not valid percent-encoded UTF-8")]
    Encoding,
}

const URL_PREFIXES: [&str; 2] = ["postgres://", "postgresql://"];

/// One `keyword=value` of either form: where it lies in the string, and its decoded parts.
struct Parameter {
    span: std::ops::Range<usize>,
    keyword: String,
    value: String,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (the last one wins, as in libpq).
pub(super) fn split(url: &str) -> Result<Split, SyntaxError> {
    let (parameters, separator) = match query(url) {
        Some(query_start) => (url_parameters(url, query_start)?, "&"),
        None if is_url(url) => (Vec::new(), "&"),
        None => (pairs(url)?, " "),
    };
    let mut split = Split::default();
    let mut kept = Vec::new();
    for parameter in parameters {
        match parameter.keyword.as_str() {
            "sslmode" => split.sslmode = Some(parameter.value),
            "sslrootcert" => split.sslrootcert = Some(parameter.value),
            _ => kept.push(&url[parameter.span]),
        }
    }
    split.rest = match query(url) {
        Some(query_start) if kept.is_empty() => url[..query_start - 1].to_owned(),
        Some(query_start) => format!("{}{}", &url[..query_start], kept.join(separator)),
        None if is_url(url) => url.to_owned(),
        None => kept.join(separator),
    };
    Ok(split)
}

/// `url` with every password replaced by `[redacted]`, for `Debug` output and messages; a string
/// that does not scan is not shown at all.
pub(super) fn redacted(url: &str) -> String {
    const HIDDEN: &str = "[redacted]";
    if is_url(url) {
        let prefix = URL_PREFIXES
            .iter()
            .find(|p| url.starts_with(*p))
            .map_or(0, |p| p.len());
        let mut out = String::with_capacity(url.len());
        let mut rest_start = prefix;
        out.push_str(&url[..prefix]);
        // Credentials run to the first `@`; the password follows the first `:` in them.
        if let Some(at) = url[prefix..].find('@') {
            let credentials = &url[prefix..prefix + at];
            match credentials.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:{HIDDEN}")),
                None => out.push_str(credentials),
            }
            rest_start = prefix + at;
        }
        let Some(query_start) = query(url) else {
            out.push_str(&url[rest_start..]);
            return out;
        };
        out.push_str(&url[rest_start..query_start]);
        let Ok(parameters) = url_parameters(url, query_start) else {
            return format!("{}[unparsable parameters, not shown]", out);
        };
        let shown: Vec<Cow<'_, str>> = parameters
            .iter()
            .map(|p| match p.keyword.as_str() {
                "password" => Cow::Owned(format!("password={HIDDEN}")),
                _ => Cow::Borrowed(&url[p.span.clone()]),
            })
            .collect();
        out.push_str(&shown.join("&"));
        out
    } else {
        match pairs(url) {
            Ok(parameters) => parameters
                .iter()
                .map(|p| match p.keyword.as_str() {
                    "password" => Cow::Owned(format!("password={HIDDEN}")),
                    _ => Cow::Borrowed(&url[p.span.clone()]),
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "[unparsable connection string, not shown]".to_owned(),
        }
    }
}

fn is_url(url: &str) -> bool {
    URL_PREFIXES.iter().any(|prefix| url.starts_with(prefix))
}

/// Where a URL's query starts (after its `?`), if it is a URL with one. As in tokio-postgres,
/// the credentials end at the first `@`, so a `?` in a password does not start the query.
fn query(url: &str) -> Option<usize> {
    let prefix = URL_PREFIXES.iter().find(|p| url.starts_with(*p))?.len();
    let after_credentials = url[prefix..].find('@').map_or(prefix, |at| prefix + at + 1);
    url[after_credentials..]
        .find('?')
        .map(|q| after_credentials + q + 1)
}

/// The `&`-separated parameters of a URL's query, from `start`. A parameter without `=` is kept
/// as it is, for tokio-postgres to refuse.
fn url_parameters(url: &str, start: usize) -> Result<Vec<Parameter>, SyntaxError> {
    let mut parameters = Vec::new();
    let mut offset = start;
    for raw in url[start..].split('&') {
        let span = offset..offset + raw.len();
        offset += raw.len() + 1;
        if raw.is_empty() {
            continue;
        }
        let (keyword, value) = raw.split_once('=').unwrap_or((raw, ""));
        parameters.push(Parameter {
            span,
            keyword: decode(keyword)?,
            value: decode(value)?,
        });
    }
    Ok(parameters)
}

fn decode(text: &str) -> Result<String, SyntaxError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| SyntaxError::Encoding)
}

/// The pairs of a keyword/value string, scanned as tokio-postgres does.
fn pairs(text: &str) -> Result<Vec<Parameter>, SyntaxError> {
    let mut chars = text.char_indices().peekable();
    let mut parameters = Vec::new();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return Ok(parameters);
        };
        let mut keyword = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            keyword.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(SyntaxError::Pairs(start));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(SyntaxError::Unterminated),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(SyntaxError::Pairs(start));
            }
        }
        let end = chars.peek().map_or(text.len(), |(i, _)| *i);
        parameters.push(Parameter {
            span: start..end,
            keyword,
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, Option<String>, Option<String>) {
        let split = split(url).expect("scans");
        (split.rest, split.sslmode, split.sslrootcert)
    }

    #[test]
    fn tls_parameters_are_taken_out_of_a_url() {
        assert_eq!(
            parts(
                "postgres://u:p@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem"
            ),
            (
                "postgres://u:p@db.example:5432/app?application_name=x".to_owned(),
                Some("verify-full".to_owned()),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            parts("postgresql://db/app?sslmode=require"),
            (
                "postgresql://db/app".to_owned(),
                Some("require".to_owned()),
                None
            )
        );
        assert_eq!(
            parts("postgres://u@db/app"),
            ("postgres://u@db/app".to_owned(), None, None)
        );
    }

    #[test]
    fn a_question_mark_in_the_password_does_not_start_the_query() {
        assert_eq!(
            parts("postgres://u:pa?ss@db/app?sslmode=verify-ca"),
            (
                "postgres://u:pa?ss@db/app".to_owned(),
                Some("verify-ca".to_owned()),
                None
            )
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_keyword_value_pairs() {
        assert_eq!(
            parts(
                "host=db  sslmode = verify-full password='a b\\'c' sslrootcert='/my ca.pem' dbname=app"
            ),
            (
                "host=db password='a b\\'c' dbname=app".to_owned(),
                Some("verify-full".to_owned()),
                Some("/my ca.pem".to_owned())
            )
        );
        assert!(matches!(
            split("host=db sslmode"),
            Err(SyntaxError::Pairs(8))
        ));
        assert!(matches!(
            split("host=db password='open"),
            Err(SyntaxError::Unterminated)
        ));
    }

    #[test]
    fn what_remains_parses_as_tokio_postgres_would() {
        for url in [
            "postgres://u:p@db.example:5432/app?sslmode=verify-full&connect_timeout=3",
            "host=db port=5433 sslrootcert=/ca.pem user=u password='x y'",
        ] {
            let rest = split(url).expect("scans").rest;
            let config: tokio_postgres::Config = rest.parse().expect("tokio-postgres parses it");
            assert_eq!(config.get_user(), Some("u"), "{rest}");
        }
    }

    #[test]
    fn passwords_are_redacted_in_both_forms() {
        assert_eq!(
            redacted("postgres://app:s3cr%40t@db:5432/app?password=other&sslmode=verify-full"),
            "postgres://app:[redacted]@db:5432/app?password=[redacted]&sslmode=verify-full"
        );
        assert_eq!(redacted("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(
            redacted("host=db password='s3 cret' sslmode=require"),
            "host=db password=[redacted] sslmode=require"
        );
        assert_eq!(
            redacted("host=db password='s3cret"),
            "[unparsable connection string, not shown]"
        );
    }
}
