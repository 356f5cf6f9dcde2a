//! Write a tiny random model bundle (the one the tests use) to a directory, for checks that
//! run the `sprout` binary without a trained model: `tiny_bundle DIR`.

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args().nth(1) else {
        anyhow::bail!("usage: tiny_bundle DIR");
    };
    sprout_pipeline::testing::tiny_serving_bundle()?.write_dir(std::path::Path::new(&dir))?;
    println!("wrote a tiny random model to {dir}");
    Ok(())
}
