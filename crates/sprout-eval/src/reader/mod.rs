//! The reader: parses any image back into detected objects (shape kind and colour, icon
//! identity, or a line of text and its colour, each with its box), by analysis-by-synthesis
//! against templates rendered by the world itself.
//!
//! Steps: figure/ground by the world's colour families → 8-connected components → each
//! component resampled to a 32x32 grid and compared with every template (coverage error +
//! colour error + aspect mismatch) → components that fit no template are dropped → glyphs
//! that line up (same colour, similar height, small gaps) are joined into text.

mod segment;
pub mod templates;
mod text;

use image::RgbImage;
use serde::{Deserialize, Serialize};
use sprout_world::{assets, Color, ObjectKind, ShapeKind};

use segment::{components, dominant_color, observe, LabImage};
use templates::{aspect_penalty, bank, color_error, mask_error, Hyp, COLOR_SCALE, COLOR_WEIGHT};

/// Components whose best template costs more than this are not objects.
pub const REJECT_COST: f32 = 0.32;
/// Smallest component, as a fraction of the image area (and never under 12 pixels).
pub const MIN_AREA_FRACTION: f32 = 0.00025;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// What was read, in the scene spec's own terms.
    #[serde(flatten)]
    pub kind: ObjectKind,
    /// x0, y0, x1, y1 in pixels (end exclusive).
    pub bbox: [u32; 4],
    /// Box centre, normalised to the image.
    pub center: [f32; 2],
    /// Template cost of the match (lower is better).
    pub cost: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub width: u32,
    pub height: u32,
    pub objects: Vec<Detection>,
}

/// Best hypotheses of one component.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub bbox: [u32; 4],
    pub color: Color,
    pub shape: (ShapeKind, f32),
    pub glyph: (char, f32),
    pub icon: (usize, f32),
}

impl Candidate {
    pub fn height(&self) -> f32 {
        (self.bbox[3] - self.bbox[1]) as f32
    }
    pub fn cy(&self) -> f32 {
        (self.bbox[1] + self.bbox[3]) as f32 / 2.0
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Reader;

impl Reader {
    pub fn new() -> Reader {
        // Build the template bank up front so reading time is per image.
        bank();
        Reader
    }

    pub fn read(&self, img: &RgbImage) -> Reading {
        let (w, h) = img.dimensions();
        let lab = LabImage::new(img);
        let min_area = ((w * h) as f32 * MIN_AREA_FRACTION).max(12.0) as usize;
        let (comps, labels) = components(&lab, min_area);
        let bank = bank();
        let mut cands = Vec::with_capacity(comps.len());
        for c in &comps {
            let obs = observe(&lab, &labels, c);
            let (color, spread) = dominant_color(&lab, &labels, c, COLOR_SCALE);
            let flat = COLOR_WEIGHT * spread;
            let mut shape = (ShapeKind::Circle, f32::INFINITY);
            let mut glyph = ('?', f32::INFINITY);
            let mut icon = (0usize, f32::INFINITY);
            for t in &bank.templates {
                let ap = aspect_penalty(&obs, &t.obs);
                let bound = match t.hyp {
                    Hyp::Shape(_) => shape.1,
                    Hyp::Glyph(_) => glyph.1,
                    Hyp::Icon(_) => icon.1,
                };
                if ap >= bound {
                    continue;
                }
                let base = ap + mask_error(&obs, &t.obs);
                match t.hyp {
                    Hyp::Shape(k) if base + flat < shape.1 => shape = (k, base + flat),
                    Hyp::Glyph(g) if base + flat < glyph.1 => glyph = (g, base + flat),
                    Hyp::Icon(i) if base < icon.1 => {
                        let cost = base + color_error(&obs, &t.obs);
                        if cost < icon.1 {
                            icon = (i, cost);
                        }
                    }
                    _ => {}
                }
            }
            cands.push(Candidate {
                bbox: c.bbox,
                color,
                shape,
                glyph,
                icon,
            });
        }
        let mut objects = text::assemble(&cands, w, h);
        objects.sort_by(|a, b| a.center[0].total_cmp(&b.center[0]));
        Reading {
            width: w,
            height: h,
            objects,
        }
    }
}

pub(crate) fn detection(kind: ObjectKind, bbox: [u32; 4], w: u32, h: u32, cost: f32) -> Detection {
    let center = [
        (bbox[0] + bbox[2]) as f32 / 2.0 / w as f32,
        (bbox[1] + bbox[3]) as f32 / 2.0 / h as f32,
    ];
    Detection {
        kind,
        bbox,
        center,
        cost,
    }
}

pub(crate) fn icon_kind(i: usize) -> ObjectKind {
    ObjectKind::Icon {
        icon: assets::icon_name(i).to_string(),
    }
}
