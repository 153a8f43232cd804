use clap::Parser;
use command_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    chronicle_infra::telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    app.run_until_stopped(chronicle_infra::shutdown::signal())
        .await
}
