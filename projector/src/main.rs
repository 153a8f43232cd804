use clap::Parser;
use projector::{Cli, Command, DeadLetterCommand, Projector};

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
        Command::Status => {
            let pool = config.migrated_pool().await?;
            projector::print_status(&config.kafka, &pool).await
        }
        Command::DeadLetters(action) => {
            let pool = config.migrated_pool().await?;
            match action {
                DeadLetterCommand::List { all } => projector::list_dead_letters(&pool, all).await,
                DeadLetterCommand::Retry { id } => {
                    projector::retry_dead_letter(&pool, &config.kafka.topic, id).await
                }
                DeadLetterCommand::Skip { id } => projector::skip_dead_letter(&pool, id).await,
            }
        }
    }
}
