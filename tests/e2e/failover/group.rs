//! Projectors of one consumer group SIGKILLed under load, under each group protocol
//! ([`GroupSetup`]): how long a killed member's partitions wait before a surviving or restarted
//! member applies them again, and that the read models stay exact.
//!
//! The kills come at moments chosen by the random generator, not at moments a projector is known
//! to own partitions: a member killed while it joins is part of what is tested.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::crash::{expected, seed};
use crate::harness::Rng;
use crate::load::{self, LoadConfig};
use crate::model::assert_read_models;

use crate::projector_group::wait_for_committed_log_end;

use super::{GroupSetup, owned_at_death, probe_every_partition, probe_users};

/// What a reassignment may take beyond the session timeout: the survivor learns of it on a
/// heartbeat, rejoins (classic) or takes the partitions (consumer protocol), reads the stored
/// offsets and applies the probe; on two loaded cores each step can take a second or two.
fn reassignment_margin(setup: GroupSetup) -> Duration {
    2 * setup.heartbeat_interval() + Duration::from_secs(8)
}

/// The survivor of two projectors applies the killed one's partitions again within the
/// session timeout (and a margin), and the read models equal the acknowledged commands.
async fn killed_member_partitions_move_to_the_survivor(setup: GroupSetup) {
    // Arrange: a broker of its own with this setup's group settings, two projectors in the
    // group, users with seeded posts, and one probe user per partition.
    let broker = setup.broker().await;
    let app = Arc::new(setup.app(&broker).partitions(8).projectors(2).spawn().await);
    let mut rng = Rng::for_test();
    println!(
        "{setup:?}: seed {:#x}, logs in {}",
        rng.state(),
        app.log_dir().display()
    );
    let (users, seeded) = seed(&app, 10, 2).await;
    let probes = probe_users(&app).await;

    // Act: load from one task per user; at a random moment one of the projectors is SIGKILLed,
    // and right after the kill one probe per partition goes in. A probe on a partition the
    // survivor owns is applied at once; one on the killed member's waits for the reassignment.
    let faults_done = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn({
        let (app, faults_done) = (app.clone(), faults_done.clone());
        let mut rng = Rng::seeded(rng.next_u64());
        async move {
            // This sleep times the fault; nothing waits on it for a read.
            tokio::time::sleep(rng.millis_between(2000, 5000)).await;
            let victim = rng.below(2);
            let killed_at = Instant::now();
            let log = app.kill_projector_at(victim);
            let deadline = setup.session_timeout() + Duration::from_secs(60);
            let applied = probe_every_partition(&app, &probes, "probe", killed_at, deadline).await;
            faults_done.store(true, Ordering::SeqCst);
            (victim, owned_at_death(&log), applied)
        }
    });
    let config = LoadConfig {
        commands_per_user: 60,
        max_commands_per_user: 2000,
    };
    let result = load::run(app.clone(), &users, &seeded, config, faults_done, &mut rng).await;
    let (victim, owned, applied) = killer
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let caught_up = Instant::now();
    app.wait_for_within(&result.positions, Duration::from_secs(120))
        .await;
    let caught_up = caught_up.elapsed();

    // Assert: every partition applied again within the session timeout and the margin...
    let reassignment = applied.values().max().copied().unwrap_or_default();
    let of_killed = owned.iter().filter_map(|p| applied.get(p)).max().copied();
    let bound = setup.session_timeout() + reassignment_margin(setup);
    println!(
        "{setup:?}: killed projector {victim}, which owned partitions {owned:?} by its log; \
         every partition applied again {reassignment:.1?} after the kill (the killed member's: \
         {of_killed:.1?}; bound {bound:?}); per partition: {}",
        applied
            .iter()
            .map(|(p, d)| format!("{p}={d:.1?}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(
        reassignment < bound,
        "{setup:?}: the killed member's partitions took {reassignment:?} to be applied again \
         (bound {bound:?})"
    );
    // ...the read models hold every acknowledged command once...
    println!(
        "{setup:?}: {} of {} commands acknowledged; the rest of the log applied {caught_up:.1?} \
         after the load",
        result.ops.len(),
        result.attempted
    );
    assert_read_models(&app, &expected(&users, &seeded, &result.ops)).await;
    // ...and the group's offsets in Kafka, advisory, follow to the end of the log.
    let committed = wait_for_committed_log_end(&app, Duration::from_secs(30)).await;
    println!("{setup:?}: committed offsets at the log end {committed:.1?} after the check began");
    assert_eq!(app.running_projectors(), 1, "the survivor exited");
    app.assert_services_alive();
    drop(app);
    drop(broker);
}

/// One projector SIGKILLed at arbitrary moments (while it applies, and while a fresh one joins
/// the group), restarted each time: after the last restart the lag returns to zero within a
/// bound, and the read models equal the acknowledged commands.
async fn projector_killed_while_joining_catches_up(setup: GroupSetup) {
    const KILLS: usize = 5;
    // Arrange
    let broker = setup.broker().await;
    let app = Arc::new(setup.app(&broker).partitions(12).spawn().await);
    let mut rng = Rng::for_test();
    println!(
        "{setup:?}: seed {:#x}, logs in {}",
        rng.state(),
        app.log_dir().display()
    );
    let (users, seeded) = seed(&app, 12, 2).await;

    // Act: load from one task per user while another task kills and restarts the projector;
    // the load stops soon after the last restart.
    let faults_done = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn({
        let (app, faults_done) = (app.clone(), faults_done.clone());
        let mut rng = Rng::seeded(rng.next_u64());
        async move {
            let mut last_restart = Instant::now();
            for _ in 0..KILLS {
                // These sleeps time the faults; nothing waits on them for a read. The kill may
                // come while a projector applies events or while a fresh one is still joining.
                tokio::time::sleep(rng.millis_between(0, 1500)).await;
                app.kill_projector();
                tokio::time::sleep(rng.millis_between(0, 500)).await;
                last_restart = Instant::now();
                app.start_projector().await;
            }
            faults_done.store(true, Ordering::SeqCst);
            last_restart
        }
    });
    let config = LoadConfig {
        commands_per_user: 30,
        max_commands_per_user: 2000,
    };
    let result = load::run(app.clone(), &users, &seeded, config, faults_done, &mut rng).await;
    let last_restart = killer
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let load_ended = last_restart.elapsed();
    let deadline = setup.session_timeout() + Duration::from_secs(90);
    app.wait_for_within(&result.positions, deadline).await;
    let lag_zero = last_restart.elapsed();

    // Assert: the lag is back to zero within the bound: the dead members' session timeout (the
    // new member gets their partitions only once the group gives up on them), a margin for the
    // rebalance, and what the load left to apply.
    let bound = setup.session_timeout() + reassignment_margin(setup) + load_ended;
    println!(
        "{setup:?}: projector killed {KILLS} times; {} of {} commands acknowledged; load ended \
         {load_ended:.1?} after the last restart; lag zero {lag_zero:.1?} after it (bound \
         {bound:.1?})",
        result.ops.len(),
        result.attempted
    );
    assert!(
        lag_zero < bound,
        "{setup:?}: the lag took {lag_zero:?} after the last restart to return to zero (bound \
         {bound:?})"
    );
    assert_read_models(&app, &expected(&users, &seeded, &result.ops)).await;
    let committed = wait_for_committed_log_end(&app, Duration::from_secs(30)).await;
    println!("{setup:?}: committed offsets at the log end {committed:.1?} after the check began");
    app.assert_services_alive();
    drop(app);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_members_partitions_move_to_the_survivor_classic() {
    killed_member_partitions_move_to_the_survivor(GroupSetup::Classic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_members_partitions_move_to_the_survivor_consumer_protocol_broker_defaults() {
    killed_member_partitions_move_to_the_survivor(GroupSetup::ConsumerBrokerDefaults).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_members_partitions_move_to_the_survivor_consumer_protocol_lowered_timeouts() {
    killed_member_partitions_move_to_the_survivor(GroupSetup::ConsumerBrokerLowered).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_while_joining_catches_up_after_the_last_restart_classic() {
    projector_killed_while_joining_catches_up(GroupSetup::Classic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_while_joining_catches_up_consumer_protocol_broker_defaults() {
    projector_killed_while_joining_catches_up(GroupSetup::ConsumerBrokerDefaults).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn projector_killed_while_joining_catches_up_consumer_protocol_lowered_timeouts() {
    projector_killed_while_joining_catches_up(GroupSetup::ConsumerBrokerLowered).await;
}
