//! `sprout world …`

use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use serde_json::json;
use sprout_world::canvas::parse_size;
use sprout_world::sampler::{sample, CanvasChoice, SamplerConfig};
use sprout_world::{assets, AspectRatio, Renderer, Scene};

use crate::progress::bar;

#[derive(Args)]
pub struct WorldArgs {
    #[command(subcommand)]
    command: WorldCommand,
}

#[derive(Subcommand)]
enum WorldCommand {
    /// Render random scenes: DIR/000000.png and DIR/000000.json (scene + three captions).
    Render(RenderArgs),
    /// Render one scene file (JSON) to a PNG.
    Draw {
        /// Scene JSON file.
        scene: PathBuf,
        /// Output PNG.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// List the icon concepts.
    Icons,
}

#[derive(Args)]
struct RenderArgs {
    /// Number of scenes (1..=10000000).
    #[arg(long, default_value_t = 16)]
    count: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Canvas size WxH (default 256x256).
    #[arg(long, conflicts_with = "aspect")]
    size: Option<String>,
    /// Aspect ratio: `any` or one of 1:1, 4:3, 3:4, 3:2, 2:3, 16:9, 9:16, 2:1, 1:2.
    #[arg(long)]
    aspect: Option<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Sampler configuration (JSON); the defaults otherwise.
    #[arg(long)]
    sampler: Option<PathBuf>,
}

pub fn run(a: WorldArgs) -> Result<()> {
    match a.command {
        WorldCommand::Render(r) => render(r),
        WorldCommand::Draw { scene, out } => {
            let text = std::fs::read_to_string(&scene)
                .with_context(|| format!("reading {}", scene.display()))?;
            let s = Scene::from_json(&text)
                .with_context(|| format!("scene file {}", scene.display()))?;
            let img = Renderer::new().render(&s)?;
            img.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        WorldCommand::Icons => {
            for n in assets::icon_names() {
                println!("{n}");
            }
            Ok(())
        }
    }
}

fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )?;
    Ok(buf)
}

fn render(r: RenderArgs) -> Result<()> {
    if r.count == 0 || r.count > 10_000_000 {
        bail!("--count {} is out of range (1..=10000000)", r.count);
    }
    let mut cfg = match &r.sampler {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<SamplerConfig>(&text)
                .with_context(|| format!("sampler config {}", p.display()))?
        }
        None => SamplerConfig::default(),
    };
    if let Some(s) = &r.size {
        let (width, height) = parse_size(s)?;
        cfg.canvas = CanvasChoice::Fixed { width, height };
    } else if let Some(a) = &r.aspect {
        cfg.canvas = if a == "any" {
            CanvasChoice::AnyAspect
        } else {
            CanvasChoice::Aspect {
                ratio: AspectRatio::parse(a)?,
            }
        };
    }
    cfg.validate()?;
    std::fs::create_dir_all(&r.out).with_context(|| format!("creating {}", r.out.display()))?;
    let renderer = Renderer::new();
    let pb = bar(r.count, "render");
    // Rendering happens on this thread (and is what is timed); encoding and writing happen on
    // a second thread so the file system does not distort the renderer's number.
    let (tx, rx) = sync_channel::<(u64, RgbImage, String)>(64);
    let out = r.out.clone();
    let writer = std::thread::spawn(move || -> Result<()> {
        for (i, img, meta) in rx {
            let png = encode_png(&img)?;
            let stem = out.join(format!("{i:06}"));
            std::fs::write(stem.with_extension("png"), png)
                .with_context(|| format!("writing {}.png", stem.display()))?;
            std::fs::write(stem.with_extension("json"), meta)
                .with_context(|| format!("writing {}.json", stem.display()))?;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut render_time = Duration::ZERO;
    let mut pixels = 0u64;
    for i in 0..r.count {
        let s = sample(&cfg, r.seed, i);
        let t = Instant::now();
        let img = renderer.render(&s.scene)?;
        render_time += t.elapsed();
        pixels += (img.width() * img.height()) as u64;
        let meta = serde_json::to_string_pretty(
            &json!({"seed": r.seed, "index": i, "scene": s.scene, "captions": s.captions}),
        )?;
        if tx.send((i, img, meta)).is_err() {
            break;
        }
        pb.inc(1);
    }
    drop(tx);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    pb.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    let rs = render_time.as_secs_f64();
    let mean_side = ((pixels as f64) / r.count as f64).sqrt();
    println!(
        "rendered {} scenes (mean {:.0}x{:.0} px) in {:.3} s on one thread: {:.0} scenes/s; wrote PNG+JSON to {} in {:.2} s wall",
        r.count,
        mean_side,
        mean_side,
        rs,
        r.count as f64 / rs,
        r.out.display(),
        wall
    );
    Ok(())
}
