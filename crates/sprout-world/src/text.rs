//! Text layout with the vendored font: glyph outlines become tiny-skia paths, so text is
//! antialiased exactly like shapes.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, OutlineCurve};
use resvg::tiny_skia::{Path, PathBuilder, Transform};

use crate::assets::FONT_BYTES;
use crate::SizeClass;

/// Extra space between letters, in em, so neighbouring glyphs never touch.
pub const TRACKING_EM: f32 = 0.12;
/// Largest fraction of the canvas width a text item may span.
pub const MAX_WIDTH_FRACTION: f32 = 0.9;

/// One glyph: its outline in em units (y down, baseline at 0) and its advance.
pub struct Glyph {
    pub path: Option<Path>,
    pub advance: f32,
    /// Ink extent in em: (min_x, max_x).
    pub ink: (f32, f32),
}

pub struct FontCache {
    /// Cap height in em.
    pub cap_height: f32,
    glyphs: Vec<(char, Glyph)>,
}

fn build_glyph(font: &FontRef<'_>, c: char) -> Glyph {
    let id = font.glyph_id(c);
    let upem = font.units_per_em().unwrap_or(1000.0);
    let advance = font.h_advance_unscaled(id) / upem;
    let Some(outline) = font.outline(id) else {
        return Glyph {
            path: None,
            advance,
            ink: (0.0, advance),
        };
    };
    let p = |pt: ab_glyph::Point| (pt.x / upem, -pt.y / upem);
    let mut pb = PathBuilder::new();
    let mut last: Option<(f32, f32)> = None;
    for curve in &outline.curves {
        let start = match curve {
            OutlineCurve::Line(a, _)
            | OutlineCurve::Quad(a, _, _)
            | OutlineCurve::Cubic(a, _, _, _) => p(*a),
        };
        if last != Some(start) {
            if last.is_some() {
                pb.close();
            }
            pb.move_to(start.0, start.1);
        }
        let end = match curve {
            OutlineCurve::Line(_, b) => {
                let b = p(*b);
                pb.line_to(b.0, b.1);
                b
            }
            OutlineCurve::Quad(_, c, b) => {
                let (c, b) = (p(*c), p(*b));
                pb.quad_to(c.0, c.1, b.0, b.1);
                b
            }
            OutlineCurve::Cubic(_, c1, c2, b) => {
                let (c1, c2, b) = (p(*c1), p(*c2), p(*b));
                pb.cubic_to(c1.0, c1.1, c2.0, c2.1, b.0, b.1);
                b
            }
        };
        last = Some(end);
    }
    pb.close();
    let ink = (outline.bounds.min.x / upem, outline.bounds.max.x / upem);
    Glyph {
        path: pb.finish(),
        advance,
        ink,
    }
}

/// The font's glyphs for A–Z and 0–9, built once.
pub fn font_cache() -> &'static FontCache {
    static CACHE: OnceLock<FontCache> = OnceLock::new();
    CACHE.get_or_init(|| {
        // The font is vendored and embedded; failing to parse it is a build defect.
        let font = FontRef::try_from_slice(FONT_BYTES).expect("vendored font parses");
        let glyphs: Vec<(char, Glyph)> = ('A'..='Z')
            .chain('0'..='9')
            .map(|c| (c, build_glyph(&font, c)))
            .collect();
        let h = font.outline(font.glyph_id('H')).expect("H has an outline");
        let upem = font.units_per_em().unwrap_or(1000.0);
        // ab_glyph's unscaled bounds keep the font's y-up order, so take the magnitude.
        FontCache {
            cap_height: (h.bounds.max.y - h.bounds.min.y).abs() / upem,
            glyphs,
        }
    })
}

impl FontCache {
    pub fn glyph(&self, c: char) -> Option<&Glyph> {
        self.glyphs.iter().find(|(g, _)| *g == c).map(|(_, g)| g)
    }

    /// Ink width of `text` in em.
    pub fn ink_width_em(&self, text: &str) -> f32 {
        let (first, last) = self.ink_span_em(text);
        last - first
    }

    fn ink_span_em(&self, text: &str) -> (f32, f32) {
        let mut pen = 0.0;
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for c in text.chars() {
            if let Some(g) = self.glyph(c) {
                lo = lo.min(pen + g.ink.0);
                hi = hi.max(pen + g.ink.1);
                pen += g.advance + TRACKING_EM;
            }
        }
        if lo > hi {
            (0.0, 0.0)
        } else {
            (lo, hi)
        }
    }
}

/// Laid-out text: em size in pixels and ink box size in pixels.
#[derive(Debug, Clone, Copy)]
pub struct TextLayout {
    pub em_px: f32,
    pub width: f32,
    pub height: f32,
}

/// Size text of class `size` on a `width`x`height` canvas, shrinking it to fit the width.
pub fn layout(text: &str, size: SizeClass, width: u32, height: u32) -> TextLayout {
    let fc = font_cache();
    let min_side = width.min(height) as f32;
    let mut em_px = size.cap_height() * min_side / fc.cap_height;
    let w_em = fc.ink_width_em(text).max(1e-3);
    let max_w = MAX_WIDTH_FRACTION * width as f32;
    if w_em * em_px > max_w {
        em_px = max_w / w_em;
    }
    TextLayout {
        em_px,
        width: w_em * em_px,
        height: fc.cap_height * em_px,
    }
}

/// Paths of each glyph placed so the ink box is centred on `center` (pixels).
pub fn placed_glyphs(
    text: &str,
    lay: &TextLayout,
    center: (f32, f32),
    rotation: f32,
) -> Vec<(&'static Path, Transform)> {
    let fc = font_cache();
    let (lo, hi) = fc.ink_span_em(text);
    let cx_em = (lo + hi) / 2.0;
    let cy_em = -fc.cap_height / 2.0;
    let base = Transform::from_translate(center.0, center.1)
        .pre_rotate(rotation)
        .pre_scale(lay.em_px, lay.em_px);
    let mut out = Vec::new();
    let mut pen = 0.0;
    for c in text.chars() {
        if let Some(g) = fc.glyph(c) {
            if let Some(path) = &g.path {
                out.push((path, base.pre_translate(pen - cx_em, -cy_em)));
            }
            pen += g.advance + TRACKING_EM;
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_upright_and_sized() {
        let fc = font_cache();
        assert!(
            (0.6..0.8).contains(&fc.cap_height),
            "cap height {} em",
            fc.cap_height
        );
        let lay = layout("EF", SizeClass::Large, 256, 256);
        assert!((lay.height - 0.14 * 256.0).abs() < 0.5, "{lay:?}");
        let placed = placed_glyphs("EF", &lay, (128.0, 64.0), 0.0);
        assert_eq!(placed.len(), 2);
        // Left to right, not mirrored.
        assert!(placed[0].1.sx > 0.0 && placed[0].1.sy > 0.0);
        assert!(placed[0].1.tx < placed[1].1.tx);
        // Long strings shrink to fit the width.
        let wide = layout("WWWWWW", SizeClass::Large, 256, 256);
        assert!(wide.width <= MAX_WIDTH_FRACTION * 256.0 + 0.01);
    }
}
