//! How well has a model with a centre map (`semantic_map = "centres"`) learnt the layout,
//! apart from how well its decoder draws? For each prompt of LIST (JSON lines with `id`,
//! `text` and optionally `width`, `height`, as `sprout eval --list` prints), the model
//! samples with its defaults and seed 0; the sampled centre channels are read back into a
//! scene (each cell whose presence channel is positive is one object: its strongest kind
//! channel, the nearest object colour, the size class, rotation and centre) and the world's
//! renderer draws it to `OUTDIR/<id>.png`, for `sprout eval --images OUTDIR`. That score is
//! what a perfect decoder of the sampled map would give. A diagnostic only: the renderer is
//! never in the generation path. Text objects are left out (the map does not spell them).
//!
//! `cargo run --release -p sprout-pipeline --example centre_render -- MODEL LIST OUTDIR`

use candle_core::Device;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::denoise::Hooks;
use sprout_pipeline::model::Family;
use sprout_pipeline::request::Request;
use sprout_world::centres::{ICON, ICON_BITS, SHAPE, TEXT};
use sprout_world::colors::{BgColor, Color};
use sprout_world::scene::{Background, Object, ObjectKind, Scene, ShapeKind, SizeClass};
use sprout_world::semantic::MapKind;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 4 {
        anyhow::bail!("usage: centre_render MODEL LIST OUTDIR");
    }
    let dev = Device::Cpu;
    let b = Bundle::load_dir(std::path::Path::new(&a[1]), &dev)?;
    if b.meta.semantic_map != MapKind::Centres || b.meta.semantic_channels == 0 {
        anyhow::bail!("{}: the model denoises no centre map", a[1]);
    }
    let list = std::fs::read_to_string(&a[2])?;
    std::fs::create_dir_all(&a[3])?;
    let profile = Family::profile(&b);
    let renderer = sprout_world::Renderer::new();
    let latent = b.meta.ae.latent_channels;
    for line in list.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(id), Some(prompt)) = (v["id"].as_str(), v["text"].as_str()) else {
            anyhow::bail!("{}: a line without id and text: {line}", a[2]);
        };
        let width = v["width"].as_u64().unwrap_or(256) as u32;
        let height = v["height"].as_u64().unwrap_or(256) as u32;
        let req = Request {
            width,
            height,
            seed: 0,
            ..Request::new(prompt, &profile)
        };
        let z = Hooks::progress(&mut |_, _| {}, |hooks| {
            sprout_pipeline::generate::generate_latents(&b, std::slice::from_ref(&req), hooks)
        })?;
        let (_, _, rows, cols) = z.dims4()?;
        let map: Vec<f32> = z
            .narrow(1, latent, b.meta.semantic_channels)?
            .flatten_all()?
            .to_vec1()?;
        let scene = read_scene(&map, rows, cols, width, height);
        renderer
            .render(&scene)?
            .save(format!("{}/{id}.png", a[3]))?;
    }
    Ok(())
}

/// The scene a sampled centre map states.
fn read_scene(map: &[f32], rows: usize, cols: usize, width: u32, height: u32) -> Scene {
    let plane = rows * cols;
    let cell_w = width as f32 / cols as f32;
    let cell_h = height as f32 / rows as f32;
    let at = |ch: usize, tok: usize| map[ch * plane + tok];
    let mut objects = Vec::new();
    for tok in 0..plane {
        if at(0, tok) <= 0.0 {
            continue;
        }
        let (r, c) = (tok / cols, tok % cols);
        let x = (c as f32 + 0.5 + at(1, tok).clamp(-1.0, 1.0) / 2.0) * cell_w / width as f32;
        let y = (r as f32 + 0.5 + at(2, tok).clamp(-1.0, 1.0) / 2.0) * cell_h / height as f32;
        let size = match at(3, tok) {
            s if s < -0.5 => SizeClass::Small,
            s if s > 0.5 => SizeClass::Large,
            _ => SizeClass::Medium,
        };
        let rotation = at(5, tok).atan2(at(4, tok)).to_degrees().rem_euclid(360.0);
        let rgb = [at(6, tok), at(7, tok), at(8, tok)].map(|v| (v + 1.0) * 127.5);
        let color = *Color::ALL
            .iter()
            .min_by(|p, q| dist(p.rgb(), rgb).total_cmp(&dist(q.rgb(), rgb)))
            .expect("colours");
        let (best_shape, shape_score) = (0..8)
            .map(|k| (k, at(SHAPE + k, tok)))
            .fold((0, f32::MIN), |m, x| if x.1 > m.1 { x } else { m });
        let kind = if at(TEXT, tok) > shape_score && at(TEXT, tok) > at(ICON, tok) {
            continue;
        } else if at(ICON, tok) > shape_score {
            let index = (0..ICON_BITS)
                .filter(|&bit| at(ICON + 1 + bit, tok) > 0.0)
                .fold(0usize, |i, bit| i | 1 << bit);
            if index >= sprout_world::assets::icon_count() {
                continue;
            }
            ObjectKind::Icon {
                icon: sprout_world::assets::icon_name(index).to_string(),
            }
        } else {
            ObjectKind::Shape {
                shape: ShapeKind::ALL[best_shape],
                color,
            }
        };
        objects.push(Object {
            kind,
            size,
            center: [x.clamp(0.0, 1.0), y.clamp(0.0, 1.0)],
            rotation,
            scale: 1.0,
        });
    }
    Scene {
        width,
        height,
        background: Background::Solid {
            color: BgColor::White,
        },
        objects,
    }
}

fn dist(a: [u8; 3], b: [f32; 3]) -> f32 {
    a.iter().zip(b).map(|(&x, y)| (x as f32 - y).powi(2)).sum()
}
