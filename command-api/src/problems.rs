//! The command API's own problem codes (the shared ones are `chronicle_infra::Problem`'s), each
//! with its title.

use axum::http::StatusCode;
use chronicle_infra::Problem;

/// 404 `post_not_found`.
pub(crate) fn post_not_found() -> Problem {
    Problem::not_found("post_not_found", "no such post").titled("No such post")
}

/// 404 `user_not_found`.
pub(crate) fn user_not_found() -> Problem {
    Problem::not_found("user_not_found", "no such user").titled("No such user")
}

/// 409 `handle_taken`.
pub(crate) fn handle_taken(handle: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "handle_taken",
        format!("the handle `{handle}` is taken"),
    )
    .titled("The handle is taken")
}

/// 403 `forbidden`: the post is someone else's.
pub(crate) fn not_the_author() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only the author can delete a post",
    )
    .titled("This is not yours")
}

/// 422 `cannot_follow_self`.
pub(crate) fn cannot_follow_self() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "cannot_follow_self",
        "you cannot follow yourself",
    )
    .titled("You cannot follow yourself")
}

/// `invalid_credentials` (401 at login, 403 where a token already says who acts): the handle
/// and password do not match. The same answer whether the handle exists or not.
pub(crate) fn invalid_credentials(status: StatusCode) -> Problem {
    invalid_credentials_because(status, "the handle or password is wrong")
}

/// `invalid_credentials` with a more specific `detail`, for callers who already proved who they
/// are.
pub(crate) fn invalid_credentials_because(status: StatusCode, detail: &str) -> Problem {
    Problem::new(status, "invalid_credentials", detail).titled("Invalid credentials")
}

/// 401 `unauthorized`: the acting user is erased (or being erased), so no data key may be made
/// for them and their commands cannot be sealed.
pub(crate) fn erased() -> Problem {
    Problem::unauthorized("this account is erased")
}
