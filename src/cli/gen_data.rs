//! `recpipe gen-data`: seeded example data.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Args;
use recpipe::{artifact, synth};

use super::Failure;

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
    /// Items listed after the events, with content but no interactions.
    #[arg(long, default_value_t = 50)]
    pub new_items: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// The largest sizes generated: a sample, not a load test of the allocator.
const MAX_USERS_OR_ITEMS: usize = 10_000_000;
const MAX_EVENTS: usize = 100_000_000;

/// Writes interactions.parquet, items.parquet, item_counts.parquet,
/// impressions.parquet and ab_log.parquet to `args.out`.
pub fn run(args: &GenDataArgs) -> Result<(), Failure> {
    for (flag, value, max) in [
        ("--users", args.users, MAX_USERS_OR_ITEMS),
        ("--items", args.items, MAX_USERS_OR_ITEMS),
        ("--events", args.events, MAX_EVENTS),
        ("--new-items", args.new_items.max(1), MAX_USERS_OR_ITEMS),
    ] {
        if !(1..=max).contains(&value) {
            return Err(Failure::BadInput(anyhow!(
                "{flag} must be between 1 and {max}, not {value}"
            )));
        }
    }
    let spec = synth::SynthSpec {
        users: args.users,
        items: args.items,
        events: args.events,
        new_items: args.new_items,
        seed: args.seed,
        ..Default::default()
    };
    gen_data(&args.out, &spec).map_err(Failure::Failed)
}

fn gen_data(out: &Path, spec: &synth::SynthSpec) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = synth::generate(spec);
    for (name, batch) in [
        ("interactions.parquet", &data.interactions),
        ("items.parquet", &data.items),
        ("item_counts.parquet", &data.item_counts),
        ("impressions.parquet", &data.impressions),
        ("ab_log.parquet", &data.ab_log),
    ] {
        let entry =
            artifact::write_parquet(&out.join(name), batch.schema(), std::slice::from_ref(batch))?;
        println!("{}: {} rows", out.join(name).display(), entry.rows);
    }
    Ok(())
}
