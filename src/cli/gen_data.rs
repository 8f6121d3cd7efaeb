//! `recpipe gen-data`: seeded example data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use recpipe::{artifact, synth};

#[derive(Args)]
pub struct GenDataArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    #[arg(long, default_value_t = 500)]
    pub items: usize,
    #[arg(long, default_value_t = 40_000)]
    pub events: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Writes interactions.parquet and items.parquet to `args.out`.
pub fn run(args: &GenDataArgs) -> anyhow::Result<()> {
    let spec = synth::SynthSpec {
        users: args.users,
        items: args.items,
        events: args.events,
        seed: args.seed,
        ..Default::default()
    };
    gen_data(&args.out, &spec)
}

fn gen_data(out: &Path, spec: &synth::SynthSpec) -> anyhow::Result<()> {
    if spec.users == 0 || spec.items == 0 {
        bail!("--users and --items must be at least 1");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = synth::generate(spec);
    for (name, batch) in [
        ("interactions.parquet", &data.interactions),
        ("items.parquet", &data.items),
    ] {
        let entry =
            artifact::write_parquet(&out.join(name), batch.schema(), std::slice::from_ref(batch))?;
        println!("{}: {} rows", out.join(name).display(), entry.rows);
    }
    Ok(())
}
