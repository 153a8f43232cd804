//! script/test's cleanup of the databases earlier runs left: it drops the leftovers of this
//! checkout's earlier runs and nothing else, so that checkouts sharing one PostgreSQL server do
//! not kill each other's runs.

use std::path::Path;
use std::process::Command;

use crate::harness::{admin_database_url, connect_postgres};

/// Runs `script/lib.sh`'s `function` with `args`: its standard output.
fn lib_sh(function: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory");
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source script/lib.sh; {function} \"$@\""
        ))
        .arg("lib.sh")
        .args(args)
        .current_dir(root)
        .output()
        .expect("cannot run bash");
    assert!(
        output.status.success(),
        "{function} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("lib.sh prints UTF-8")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_earlier_runs_of_one_checkout_are_dropped() {
    // Arrange: databases of an earlier run of a checkout, of the run of it now starting, of
    // another checkout's run (which may be in progress), and one named otherwise. The
    // checkouts are made up: this checkout's own runs are going on (this one among them).
    let admin_url = admin_database_url();
    let admin = connect_postgres(&admin_url).await;
    let this_checkout = lib_sh("test_checkout_tag", &[]);
    let fresh = lib_sh("new_test_run_tag", &[]);
    assert!(
        fresh.len() == 15 && fresh.starts_with(&format!("{this_checkout}_")),
        "a run tag is <checkout>_<6 hex digits>: {fresh}"
    );
    let made_up = || uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (checkout, other_checkout) = (made_up(), made_up());
    assert_ne!(checkout, other_checkout);
    let current = format!("{checkout}_{}", &fresh[9..]);
    let earlier = format!("{checkout}_{}", &made_up()[..6]);
    assert_ne!(current, earlier);
    let names = [
        ("earlier", format!("chronicle_t_{earlier}_cleanup1"), false),
        ("current", format!("chronicle_t_{current}_cleanup2"), true),
        (
            "other checkout",
            format!("chronicle_t_{other_checkout}_000000_cleanup3"),
            true,
        ),
        (
            "not a test run",
            format!("chronicle_x_{earlier}_cleanup4"),
            true,
        ),
    ];
    for (_, name, _) in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create {name}: {e}"));
    }

    // Act
    let said = lib_sh(
        "drop_earlier_test_databases",
        &[&admin_url, &checkout, &current],
    );

    // Assert
    let mut wrong = Vec::new();
    for (what, name, kept) in &names {
        let exists: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[name],
            )
            .await
            .expect("cannot read pg_database")
            .get(0);
        if exists != *kept {
            wrong.push(format!("{what} ({name}): kept {exists}, expected {kept}"));
        }
        if exists {
            admin
                .batch_execute(&format!("DROP DATABASE \"{name}\""))
                .await
                .unwrap_or_else(|e| panic!("cannot drop {name}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{said}");
    assert!(said.contains(&names[0].1), "{said}");
}
