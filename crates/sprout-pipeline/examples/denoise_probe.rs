//! One-step denoising probe of a model bundle, to see at which noise levels a model in
//! training already draws what the prompt asks for. For each image `IMGDIR/<id>.png` whose
//! prompt is in LIST (JSON lines with `id` and `text`, as `sprout eval --list` prints), the
//! image's latents are noised to several times t with fixed noise, x0 is predicted in one
//! step (no guidance) and decoded to `OUTDIR/t<t>/<id>.png`; the velocity and x0 errors per
//! t are printed. `sprout eval --images OUTDIR/t<t>` then scores each noise level.
//!
//! `cargo run --release -p sprout-pipeline --example denoise_probe -- MODEL LIST IMGDIR OUTDIR
//! [T,T,...]`
//! (ground-truth images: `sprout eval --self-check --save IMGDIR`).

use candle_core::{Device, Tensor};
use sprout_models::dit::embed::{grid_ids, patchify, text_ids, unpatchify};
use sprout_models::dit::DitInput;
use sprout_models::text::TextEncoder;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::image_io::{from_image, to_images};
use sprout_pipeline::noise::noise_batch;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&a.len()) {
        anyhow::bail!("usage: denoise_probe MODEL LIST IMGDIR OUTDIR [T,T,...]");
    }
    let dev = Device::Cpu;
    let b = Bundle::load_dir(std::path::Path::new(&a[1]), &dev)?;
    let list = std::fs::read_to_string(&a[2])?;
    let ts: Vec<f64> = match a.get(5) {
        Some(list) => list
            .split(',')
            .map(|t| t.parse::<f64>())
            .collect::<Result<_, _>>()?,
        None => vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
    };
    let mut err = vec![(0.0f64, 0.0f64, 0usize); ts.len()];
    for line in list.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(id), Some(prompt)) = (v["id"].as_str(), v["text"].as_str()) else {
            anyhow::bail!("{}: a line without id and text: {line}", a[2]);
        };
        let prompt = prompt.to_string();
        let path = format!("{}/{id}.png", a[3]);
        let Ok(img) = image::open(&path) else {
            continue;
        };
        let x = from_image(&img.to_rgb8(), &dev)?;
        let z0 = b.ae.encode(&x)?;
        let (_, c, lh, lw) = z0.dims4()?;
        let eps = noise_batch(&[7], &[c, lh, lw], &dev)?;
        let emb = b.text.encode(&[prompt], &dev)?;
        let p = b.meta.dit.patch_size;
        let img_ids = grid_ids(0, lh / p, lw / p, &dev)?;
        let txt_ids = text_ids(emb.states.dim(1)?, &dev)?;
        for (k, &t) in ts.iter().enumerate() {
            let xt = ((&z0 * (1.0 - t))? + (&eps * t)?)?;
            let tt = Tensor::full(t as f32, 1, &dev)?;
            let v = b.dit.forward(&DitInput {
                txt_mask: Some(&emb.mask),
                ..DitInput::new(
                    &patchify(&xt, p)?,
                    &img_ids,
                    &emb.states,
                    &txt_ids,
                    &tt,
                    &emb.pooled,
                )
            })?;
            let v = unpatchify(&v, p, lh, lw)?;
            let target = (&eps - &z0)?;
            let verr = (&v - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
            let x0 = (&xt - (&v * t)?)?;
            let xerr = (&x0 - &z0)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
            err[k].0 += verr;
            err[k].1 += xerr;
            err[k].2 += 1;
            let out = format!("{}/t{t}", a[4]);
            std::fs::create_dir_all(&out)?;
            to_images(&b.ae.decode(&x0)?)?[0].save(format!("{out}/{id}.png"))?;
        }
    }
    for (k, t) in ts.iter().enumerate() {
        let (v, x, n) = err[k];
        println!(
            "t {t:.2}  v-mse {:.4}  x0-mse {:.4}  (n {n})",
            v / n as f64,
            x / n as f64
        );
    }
    Ok(())
}
