//! Field rules of the commands (API.md), as pure functions. Lengths count Unicode scalar values.
//!
//! Text fields must not contain U+0000 (NUL): PostgreSQL text cannot hold it, so an event carrying
//! one could never be projected (it would become a dead letter and hold back its author's later
//! events). It is refused here, before anything is appended.

use chronicle_infra::Problem;

fn length(value: &str) -> usize {
    value.chars().count()
}

/// Trims and lowercases a handle, then checks it is 3–30 characters of `[a-z0-9_]`.
pub(crate) fn handle(raw: &str) -> Result<String, Problem> {
    let handle = raw.trim().to_lowercase();
    let well_formed = (3..=30).contains(&length(&handle))
        && handle
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if well_formed {
        Ok(handle)
    } else {
        Err(Problem::validation(
            "handle must be 3 to 30 characters of a-z, 0-9 and _",
        ))
    }
}

/// Trims a display name and checks it is 1–50 characters.
pub(crate) fn display_name(raw: &str) -> Result<String, Problem> {
    bounded("display_name", raw, 1, 50)
}

/// Trims a bio and checks it is at most 160 characters.
pub(crate) fn bio(raw: &str) -> Result<String, Problem> {
    bounded("bio", raw, 0, 160)
}

/// Trims a post body and checks it is 1–1000 characters.
pub(crate) fn post_body(raw: &str) -> Result<String, Problem> {
    bounded("body", raw, 1, 1000)
}

fn bounded(field: &str, raw: &str, min: usize, max: usize) -> Result<String, Problem> {
    if raw.contains('\0') {
        return Err(Problem::validation(format!(
            "{field} must not contain NUL characters (U+0000)"
        )));
    }
    let value = raw.trim();
    let n = length(value);
    if n < min {
        return Err(Problem::validation(format!("{field} must not be empty")));
    }
    if n > max {
        return Err(Problem::validation(format!(
            "{field} must be at most {max} characters (got {n})"
        )));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_normalised_then_checked() {
        assert_eq!(handle("  Alice_01 ").expect("valid"), "alice_01");
        assert_eq!(handle(&"a".repeat(30)).expect("valid").len(), 30);
        for bad in [
            "ab",
            "",
            "   ",
            &"a".repeat(31),
            "al ice",
            "alice!",
            "ålice",
            "al-ice",
        ] {
            assert!(handle(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lengths_count_scalar_values_after_trimming() {
        assert!(display_name(&"🦀".repeat(50)).is_ok());
        assert!(display_name(&"🦀".repeat(51)).is_err());
        assert!(display_name("   ").is_err());
        assert_eq!(display_name("  Ada  ").expect("valid"), "Ada");
        assert!(bio("").is_ok());
        assert!(bio(&"é".repeat(160)).is_ok());
        assert!(bio(&"é".repeat(161)).is_err());
        assert!(post_body(&"x".repeat(1000)).is_ok());
        assert!(post_body(&"x".repeat(1001)).is_err());
        assert!(post_body("\n\t ").is_err());
    }

    #[test]
    fn nul_characters_are_refused_in_every_text_field() {
        assert!(display_name("Ada\0").is_err());
        assert!(bio("a\0b").is_err());
        assert!(post_body("\0").is_err());
        assert!(post_body("hello \0 world").is_err());
        assert!(handle("ali\0ce").is_err());
        assert_eq!(post_body("x\0").expect_err("nul").status().as_u16(), 422);
    }

    #[test]
    fn failures_are_validation_failed() {
        let problem = post_body("").expect_err("empty");
        assert_eq!(problem.code(), "validation_failed");
        assert_eq!(problem.status().as_u16(), 422);
    }
}
