//! Figure/ground segmentation and connected components.
//!
//! A pixel is figure when its CIELAB colour is outside the world's background region
//! (light and nearly neutral); figure pixels are grouped into 8-connected components.

use image::{GrayImage, Luma, RgbImage};
use imageproc::region_labelling::{connected_components, Connectivity};
use sprout_world::colors::{delta_e, is_background_like, rgb_to_lab};
use sprout_world::Color;

/// Side of the square grid a component is resampled to for matching.
pub const GRID: usize = 32;

/// Per-pixel CIELAB of an image, computed through a cache of the colours seen.
pub struct LabImage {
    pub width: u32,
    pub height: u32,
    pub lab: Vec<[f32; 3]>,
}

impl LabImage {
    pub fn new(img: &RgbImage) -> LabImage {
        let mut cache: std::collections::HashMap<[u8; 3], [f32; 3]> =
            std::collections::HashMap::new();
        let lab = img
            .pixels()
            .map(|p| *cache.entry(p.0).or_insert_with(|| rgb_to_lab(p.0)))
            .collect();
        LabImage {
            width: img.width(),
            height: img.height(),
            lab,
        }
    }
}

/// One connected component of figure pixels.
pub struct Component {
    /// Pixel indices (y * width + x).
    pub pixels: Vec<u32>,
    /// Inclusive-exclusive box: x0, y0, x1, y1.
    pub bbox: [u32; 4],
    pub label: u32,
}

impl Component {
    pub fn width(&self) -> u32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> u32 {
        self.bbox[3] - self.bbox[1]
    }
    pub fn aspect(&self) -> f32 {
        self.width() as f32 / self.height() as f32
    }
}

/// Components of figure pixels with at least `min_area` pixels, and the label image.
pub fn components(lab: &LabImage, min_area: usize) -> (Vec<Component>, Vec<u32>) {
    let (w, h) = (lab.width, lab.height);
    let mut mask = GrayImage::new(w, h);
    for (i, c) in lab.lab.iter().enumerate() {
        if !is_background_like(*c) {
            mask.put_pixel(i as u32 % w, i as u32 / w, Luma([255]));
        }
    }
    let labels = connected_components(&mask, Connectivity::Eight, Luma([0u8]));
    let labels: Vec<u32> = labels.into_raw();
    let n = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut comps: Vec<Component> = (0..=n)
        .map(|l| Component {
            pixels: Vec::new(),
            bbox: [u32::MAX, u32::MAX, 0, 0],
            label: l as u32,
        })
        .collect();
    for (i, &l) in labels.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (x, y) = (i as u32 % w, i as u32 / w);
        let c = &mut comps[l as usize];
        c.pixels.push(i as u32);
        c.bbox[0] = c.bbox[0].min(x);
        c.bbox[1] = c.bbox[1].min(y);
        c.bbox[2] = c.bbox[2].max(x + 1);
        c.bbox[3] = c.bbox[3].max(y + 1);
    }
    let comps = comps
        .into_iter()
        .skip(1)
        .filter(|c| c.pixels.len() >= min_area)
        .collect();
    (comps, labels)
}

/// A component resampled onto a GRID x GRID grid by exact area averaging: per cell, the
/// fraction of the cell covered by the component and the mean CIELAB of those pixels.
pub struct Observation {
    pub alpha: Vec<f32>,
    pub lab: Vec<[f32; 3]>,
    pub aspect: f32,
}

/// Source-pixel spans (index, weight) of each grid cell along one axis.
fn spans(start: u32, len: u32) -> Vec<Vec<(u32, f32)>> {
    let scale = len as f32 / GRID as f32;
    (0..GRID)
        .map(|i| {
            let (a, b) = (i as f32 * scale, (i + 1) as f32 * scale);
            let mut out = Vec::new();
            let mut p = a.floor() as u32;
            while (p as f32) < b && p < len {
                let w = (b.min(p as f32 + 1.0) - a.max(p as f32)).max(0.0);
                if w > 0.0 {
                    out.push((start + p, w));
                }
                p += 1;
            }
            out
        })
        .collect()
}

pub fn observe(lab: &LabImage, labels: &[u32], c: &Component) -> Observation {
    let w = lab.width;
    let xs = spans(c.bbox[0], c.width());
    let ys = spans(c.bbox[1], c.height());
    let mut alpha = vec![0.0; GRID * GRID];
    let mut cols = vec![[0.0; 3]; GRID * GRID];
    for (gy, ys) in ys.iter().enumerate() {
        for (gx, xs) in xs.iter().enumerate() {
            let (mut tot, mut m, mut acc) = (0.0f32, 0.0f32, [0.0f32; 3]);
            for &(y, wy) in ys {
                for &(x, wx) in xs {
                    let wgt = wy * wx;
                    tot += wgt;
                    let i = (y * w + x) as usize;
                    if labels[i] == c.label {
                        m += wgt;
                        let l = lab.lab[i];
                        acc[0] += wgt * l[0];
                        acc[1] += wgt * l[1];
                        acc[2] += wgt * l[2];
                    }
                }
            }
            let k = gy * GRID + gx;
            alpha[k] = if tot > 0.0 { m / tot } else { 0.0 };
            if m > 0.0 {
                cols[k] = [acc[0] / m, acc[1] / m, acc[2] / m];
            }
        }
    }
    Observation {
        alpha,
        lab: cols,
        aspect: c.aspect(),
    }
}

/// Pixels of `c` at least `depth` steps (4-neighbourhood) inside it.
fn core(lab: &LabImage, labels: &[u32], c: &Component, depth: usize) -> Vec<u32> {
    let (w, h) = (lab.width as i64, lab.height as i64);
    let mut keep: Vec<u32> = c.pixels.clone();
    let mut member: std::collections::HashSet<u32> = keep.iter().copied().collect();
    for _ in 0..depth {
        let inside = |i: i64, dx: i64, dy: i64, m: &std::collections::HashSet<u32>| {
            let (x, y) = (i % w + dx, i / w + dy);
            x >= 0
                && y >= 0
                && x < w
                && y < h
                && m.contains(&((y * w + x) as u32))
                && labels[(y * w + x) as usize] == c.label
        };
        let next: Vec<u32> = keep
            .iter()
            .copied()
            .filter(|&i| {
                let i = i as i64;
                inside(i, -1, 0, &member)
                    && inside(i, 1, 0, &member)
                    && inside(i, 0, -1, &member)
                    && inside(i, 0, 1, &member)
            })
            .collect();
        member = next.iter().copied().collect();
        keep = next;
    }
    keep
}

/// The component's colour and how far its pixels stray from it.
///
/// The pixels deepest inside the component (two steps in, else one, else all) are the least
/// mixed with the background: each votes for its nearest palette colour, weighted by
/// closeness. The spread is their mean ΔE from the winner, scaled by `scale` and capped at 1
/// per pixel: a flat shape or glyph has a small spread, noise a large one.
pub fn dominant_color(lab: &LabImage, labels: &[u32], c: &Component, scale: f32) -> (Color, f32) {
    let mut voters = core(lab, labels, c, 2);
    if voters.len() < 4 {
        voters = core(lab, labels, c, 1);
    }
    if voters.len() < 4 {
        voters = c.pixels.clone();
    }
    let palette: Vec<[f32; 3]> = Color::ALL.iter().map(|c| c.lab()).collect();
    let mut votes = [0.0f32; Color::ALL.len()];
    for &i in &voters {
        let l = lab.lab[i as usize];
        let (best, d) = palette
            .iter()
            .enumerate()
            .map(|(k, p)| (k, delta_e(l, *p)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("palette");
        votes[best] += 1.0 / (1.0 + d / 10.0);
    }
    let k = (0..votes.len())
        .max_by(|a, b| votes[*a].total_cmp(&votes[*b]))
        .expect("palette");
    let spread = voters
        .iter()
        .map(|&i| (delta_e(lab.lab[i as usize], palette[k]) / scale).min(1.0))
        .sum::<f32>()
        / voters.len().max(1) as f32;
    (Color::ALL[k], spread)
}
