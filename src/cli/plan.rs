//! `recpipe plan`: a pipeline's steps in run order, what each reads and writes.

use recpipe::artifact::ArtifactKind;
use recpipe::config::Settings;
use recpipe::pipeline::RunDir;
use recpipe::pipeline::load::Pipeline;

pub fn plan(settings: &Settings, p: &Pipeline) {
    println!("pipeline {} ({})", p.name, p.file.display());
    match &p.schedule {
        Some(s) => println!(
            "schedule {s} ({}), concurrency {:?}",
            p.timezone, p.concurrency
        ),
        None => println!("schedule none (manual runs only)"),
    }
    let run_dir = RunDir::new(&settings.state_dir, &p.name, "<run_id>");
    for (i, step) in p.steps.iter().enumerate() {
        let reads: Vec<String> = step
            .needs
            .iter()
            .filter_map(|n| {
                p.step(n)
                    .map(|s| format!("{n} ({})", s.spec.output().as_str()))
            })
            .collect();
        let detail = step.spec.describe();
        println!("{:>2}. {} [{}] {detail}", i + 1, step.id, step.spec.kind());
        println!(
            "      reads:  {}",
            if reads.is_empty() {
                "-".to_string()
            } else {
                reads.join(", ")
            }
        );
        let writes = match step.spec.output() {
            ArtifactKind::Published => "the sink's table (staged, then swapped in)".to_string(),
            kind => format!(
                "{} ({})",
                run_dir.step_dir(&step.id).display(),
                kind.as_str()
            ),
        };
        println!("      writes: {writes}");
    }
}
