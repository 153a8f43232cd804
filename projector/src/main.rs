use clap::Parser;
use projector::{Cli, Command, DeadLetterCommand, GenerationCommand, Projector};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chronicle_infra::telemetry::init(cli.config.log_format);
    let config = cli.config;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let projector = Projector::build(config).await?;
            projector
                .run_until_stopped(chronicle_infra::shutdown::signal())
                .await
        }
        Command::Events { partition } => {
            let kafka = config.kafka;
            tokio::task::spawn_blocking(move || projector::print_events(&kafka, partition)).await?
        }
        Command::Status { json } => {
            let pool = config.migrated_pool().await?;
            projector::print_status(&config.kafka, &pool, json).await
        }
        Command::Rebuild { accept_diff } => projector::rebuild(&config, accept_diff).await,
        Command::Verify { a, b } => {
            let pool = config.migrated_pool().await?;
            if projector::verify_generations(&pool, &config.kafka.topic, &a, &b).await? {
                Ok(())
            } else {
                anyhow::bail!("{a} and {b} differ")
            }
        }
        Command::Generations(action) => {
            let pool = config.migrated_pool().await?;
            match action {
                GenerationCommand::List => {
                    let client = pool.get().await?;
                    for g in projector::generation::list(&client).await? {
                        println!(
                            "{}\t{}\tprojection code v{}\tcreated {}",
                            g.name,
                            g.state,
                            g.code_version,
                            g.created_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        );
                    }
                    Ok(())
                }
                GenerationCommand::Drop { name } => {
                    projector::generation::drop(&pool, &name).await?;
                    println!("generation {name} dropped");
                    Ok(())
                }
            }
        }
        Command::DeadLetters(action) => {
            let pool = config.migrated_pool().await?;
            match action {
                DeadLetterCommand::List { all } => projector::list_dead_letters(&pool, all).await,
                DeadLetterCommand::Retry { id } => {
                    projector::retry_dead_letter(&pool, &config.kafka.topic, id).await
                }
                DeadLetterCommand::Skip { id } => {
                    projector::skip_dead_letter(&pool, &config.kafka.topic, id).await
                }
            }
        }
    }
}
