//! How sensitive is a bundle's decoder to errors in its latents? Each image `IMGDIR/<id>.png`
//! of LIST is encoded, Gaussian noise of standard deviation σ is added to its latents, and the
//! result is decoded to `OUTDIR/s<σ>/<id>.png` for `sprout eval --images`.
//!
//! `cargo run --release -p sprout-pipeline --example latent_noise_probe -- MODEL LIST IMGDIR
//! OUTDIR σ,σ,...`

use candle_core::Device;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::image_io::{from_image, to_images};
use sprout_pipeline::noise::noise_batch;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        anyhow::bail!("usage: latent_noise_probe MODEL LIST IMGDIR OUTDIR SIGMA,SIGMA,...");
    }
    let dev = Device::Cpu;
    let b = Bundle::load_dir(std::path::Path::new(&a[1]), &dev)?;
    let sigmas: Vec<f64> = a[5]
        .split(',')
        .map(|s| s.parse::<f64>())
        .collect::<Result<_, _>>()?;
    for line in std::fs::read_to_string(&a[2])?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let Some(id) = v["id"].as_str() else {
            anyhow::bail!("{}: a line without id: {line}", a[2]);
        };
        let Ok(img) = image::open(format!("{}/{id}.png", a[3])) else {
            continue;
        };
        let x = from_image(&img.to_rgb8(), &dev)?;
        let z = b.ae.encode(&x)?;
        let (_, c, lh, lw) = z.dims4()?;
        let eps = noise_batch(&[3], &[c, lh, lw], &dev)?;
        for s in &sigmas {
            let out = format!("{}/s{s}", a[4]);
            std::fs::create_dir_all(&out)?;
            let zn = (&z + (&eps * *s)?)?;
            to_images(&b.ae.decode(&zn)?)?[0].save(format!("{out}/{id}.png"))?;
        }
    }
    Ok(())
}
