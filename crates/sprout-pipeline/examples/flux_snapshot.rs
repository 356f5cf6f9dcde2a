//! Write a diffusers FLUX.1 snapshot made of the tiny parity fixtures to a directory, for
//! checks that run `sprout serve --model flux-*` without real weights:
//! `flux_snapshot DIR [PIPELINE_CLASS]` (`FluxPipeline` by default, `FluxKontextPipeline`
//! for Kontext).

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        anyhow::bail!("usage: flux_snapshot DIR [PIPELINE_CLASS]");
    };
    let class = args.next().unwrap_or_else(|| "FluxPipeline".into());
    sprout_pipeline::testing::flux_snapshot(std::path::Path::new(&dir), &class)?;
    println!("wrote a tiny {class} snapshot to {dir}");
    Ok(())
}
