//! Two projector processes in one consumer group share the partitions and together apply every
//! event exactly once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::crash::{expected, seed};
use crate::harness::{Rng, TestApp};
use crate::load::{self, LoadConfig};
use crate::model::assert_read_models;

#[tokio::test(flavor = "multi_thread")]
async fn two_projectors_in_one_group_apply_every_event_once() {
    // Arrange
    let app = Arc::new(TestApp::builder().projectors(2).spawn().await);
    assert_eq!(app.running_projectors(), 2);
    let mut rng = Rng::from_entropy();
    println!("projector group test rng state {:#x}", rng.state());
    let (users, seeded) = seed(&app, 8, 2).await;

    // Act
    let no_faults = Arc::new(AtomicBool::new(true));
    let config = LoadConfig {
        commands_per_user: 40,
        max_commands_per_user: 40,
    };
    let result = load::run(app.clone(), &users, &seeded, config, no_faults, &mut rng).await;
    app.wait_for_within(&result.positions, Duration::from_secs(120))
        .await;

    // Assert
    let model = expected(&users, &seeded, &result.ops);
    assert_read_models(&app, &model).await;
    assert_eq!(
        app.running_projectors(),
        2,
        "a projector of the group exited"
    );
    app.assert_services_alive();
}
