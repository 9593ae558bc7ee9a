//! Stand-alone Kubernetes API server emulator (see `chaos_tests::kube_emulator`):
//! `kube-emulator --listen 127.0.0.1:PORT --kubeconfig PATH [--seed FILE.yaml...]`.
//! Prints the URL, writes a kubeconfig with the admin token, serves until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chaos_tests::kube_emulator::{ADMIN_TOKEN, Emulator, load_seed};
use clap::Parser;

/// Kubernetes API server emulator (an emulator, not an API server) for failoverd's tests.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (loopback), e.g. 127.0.0.1:6443; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at the emulator.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Bearer token to put in the kubeconfig (it has full rights).
    #[arg(long, default_value = ADMIN_TOKEN)]
    token: String,
    /// YAML files of objects to create at start (multi-document).
    #[arg(long, num_args = 1..)]
    seed: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emulator = Emulator::start_on(args.listen).await?;
    if args.token != ADMIN_TOKEN {
        emulator.add_token(
            &args.token,
            "admin",
            vec![chaos_tests::kube_emulator::Rule::all()],
        );
    }
    for file in &args.seed {
        for obj in load_seed(file)? {
            emulator
                .seed(obj)
                .with_context(|| format!("seeding from {}", file.display()))?;
        }
    }
    emulator.write_kubeconfig(&args.kubeconfig, &args.token)?;
    println!("{}", emulator.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
