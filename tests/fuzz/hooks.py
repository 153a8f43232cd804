"""Schemathesis hooks of the fuzz run (tests/e2e/fuzz.rs loads them through its config file).

One hook, `filter_failure`, drops exactly the failures whose answer depends on state that an
OpenAPI document cannot express, named by the problem's status and `code` (and, where the code is
shared, its `detail`). Every other failure of every check stands. Each entry says why.
"""

import atexit
import collections
import json
import os

import schemathesis

# How many failures each rule dropped, written at exit to $CHRONICLE_FUZZ_DROPPED (a JSON
# object) when set, so that the driver can show them.
DROPPED = collections.Counter()


@atexit.register
def _write_dropped():
    path = os.environ.get("CHRONICLE_FUZZ_DROPPED")
    if path:
        with open(path, "w") as out:
            json.dump(dict(DROPPED), out)

# (failure code, status, problem code, detail prefix or None): why it is not the API's fault.
STATE_DEPENDENT = [
    # not_a_server_error (ST101): a `min_position` of the right shape that the read models have
    # not reached (any generated offset beyond the end of the log) is answered 503 `stale_read`
    # after CHRONICLE_CONSISTENCY_WAIT_MS, as documented. A 503 with any other code still fails.
    ("ST101", 503, "stale_read", None),
    # positive_data_acceptance (ST202): the generated Idempotency-Key repeats one that this user
    # already sent with a different request (schemathesis draws short keys such as "0" again
    # and again). A schema cannot say "a key not used before"; the 422 is documented.
    (
        "ST202",
        422,
        "validation_failed",
        "this Idempotency-Key was already used for a different request",
    ),
    # positive_data_acceptance (ST202): PUT/DELETE /v1/users/me/following/{user_id} with the
    # fuzzing user's own id (it is in the run's dictionary of ids); documented as 422.
    ("ST202", 422, "cannot_follow_self", None),
]


def _problem(response):
    try:
        body = response.json()
    except Exception:  # not JSON: not one of ours to drop
        return None
    return body if isinstance(body, dict) else None


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps a failure unless it is one of STATE_DEPENDENT."""
    if response is None:
        return True
    problem = _problem(response)
    if problem is None:
        return True
    for code, status, problem_code, detail in STATE_DEPENDENT:
        if (
            failure.code == code
            and response.status_code == status
            and problem.get("code") == problem_code
            and (detail is None or str(problem.get("detail", "")).startswith(detail))
        ):
            DROPPED[f"{code} {status} {problem_code}"] += 1
            return False
    return True
