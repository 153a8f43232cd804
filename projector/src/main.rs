use clap::Parser;
use projector::{Cli, Command, Projector};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chronicle_infra::telemetry::init(cli.config.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let projector = Projector::build(cli.config).await?;
            projector
                .run_until_stopped(chronicle_infra::shutdown::signal())
                .await
        }
        Command::Events { partition } => {
            let kafka = cli.config.kafka;
            tokio::task::spawn_blocking(move || projector::print_events(&kafka, partition)).await?
        }
    }
}
