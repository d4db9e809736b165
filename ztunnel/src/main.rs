use clap::Parser;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use ztunnel::accesslog::LogFormat;
use ztunnel::config::{Args, Config, LogFormatArg};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let format = match args.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    let log = ztunnel::logging::init(format);
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ztunnel: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.args.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ztunnel: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ztunnel::app::run(cfg, Some(log))) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ztunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
