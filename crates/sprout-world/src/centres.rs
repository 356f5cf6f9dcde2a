//! Centre maps: per latent cell, the object whose centre lies in it, stated as a few numbers.
//!
//! An occupancy map ([`crate::semantic`]) asks a DiT to draw, per cell, the part of an
//! object's outline that falls inside it, which it learns no faster than the latent itself.
//! A centre map asks only where each object is and what it is: the cell that holds an
//! object's centre carries its kind, colour, size, rotation and the centre's offset inside
//! the cell; every other cell says "no centre here". Drawing the outline is left to a decoder
//! that reads the map (`AeConfig::semantic_channels`), which learns it from the world's exact
//! renders. Channels, for cells of `cell × cell` pixels:
//!
//! | channel | value |
//! |---|---|
//! | 0 | +1 where an object's centre lies in the cell, −1 elsewhere |
//! | 1, 2 | the centre's offset from the cell's centre (x, y), in −1..1 of half a cell |
//! | 3 | size class: small −1, medium 0, large +1 |
//! | 4, 5 | cos and sin of the clockwise rotation |
//! | 6..9 | mean RGB (−1..1) of the object's visible pixels (its own colour if it has none) |
//! | 9..17 | shape one-hot, ±1 (the 8 shape kinds) |
//! | 17 | +1 for an icon, −1 otherwise |
//! | 18..25 | the icon's index in 7 bits, ±1 |
//! | 25 | +1 for text, −1 otherwise |
//! | 26 | the share of the cell's pixels that objects cover, as `2·share − 1` (every cell) |
//!
//! Channels 1..26 are 0 in a cell without a centre. Where two centres fall in one cell, the
//! object drawn later (on top) is the one stated.

use crate::render::object_ids;
use crate::scene::{ObjectKind, Scene, ShapeKind, SizeClass};
use crate::WorldError;

/// Channels of a centre map.
pub const CHANNELS: usize = 27;
/// The first of the 8 shape channels.
pub const SHAPE: usize = 9;
/// The icon flag; the 7 icon-index bits follow it.
pub const ICON: usize = 17;
/// Bits of the icon index.
pub const ICON_BITS: usize = 7;
/// The text flag.
pub const TEXT: usize = 25;
/// The coverage channel.
pub const COVER: usize = 26;

/// The centre map of `scene` over cells of `cell` pixels: `CHANNELS × rows × cols` values,
/// channel-major. `rgb` is the scene's render as planar `3 × height × width` values in
/// −1..1.
pub fn centre_map(scene: &Scene, rgb: &[f32], cell: usize) -> Result<Vec<f32>, WorldError> {
    let ids = object_ids(scene)?;
    Ok(map_from_ids(scene, &ids, rgb, cell))
}

/// [`centre_map`] from a precomputed [`object_ids`] map.
pub fn map_from_ids(scene: &Scene, ids: &[u16], rgb: &[f32], cell: usize) -> Vec<f32> {
    let (w, h) = (scene.width as usize, scene.height as usize);
    let plane_px = w * h;
    assert_eq!(ids.len(), plane_px, "object ids");
    assert_eq!(rgb.len(), 3 * plane_px, "image");
    // Mean colour of each object's visible pixels.
    let n = scene.objects.len();
    let mut sums = vec![[0f64; 3]; n];
    let mut counts = vec![0usize; n];
    for (p, &id) in ids.iter().enumerate() {
        if id != 0 {
            let k = id as usize - 1;
            counts[k] += 1;
            for (c, s) in sums[k].iter_mut().enumerate() {
                *s += rgb[c * plane_px + p] as f64;
            }
        }
    }
    let mut out = empty(w, h, cell);
    let (rows, cols) = (h / cell, w / cell);
    let plane = rows * cols;
    fill_cover(&mut out, ids.iter().map(|&id| id != 0), w, h, cell);
    for (k, o) in scene.objects.iter().enumerate() {
        let colour = if counts[k] > 0 {
            sums[k].map(|s| (s / counts[k] as f64) as f32)
        } else {
            own_colour(&o.kind)
        };
        let (x, y) = (o.center[0] * w as f32, o.center[1] * h as f32);
        let Some(tok) = place(&mut out, x, y, cell, rows, cols) else {
            continue;
        };
        out[3 * plane + tok] = match o.size {
            SizeClass::Small => -1.0,
            SizeClass::Medium => 0.0,
            SizeClass::Large => 1.0,
        };
        let rot = o.rotation.to_radians();
        out[4 * plane + tok] = rot.cos();
        out[5 * plane + tok] = rot.sin();
        for (c, v) in colour.iter().enumerate() {
            out[(6 + c) * plane + tok] = *v;
        }
        for (c, v) in kind_code(&o.kind).iter().enumerate() {
            out[(SHAPE + c) * plane + tok] = *v;
        }
    }
    out
}

/// The kind channels (`SHAPE..COVER`) of an object: 17 values of ±1.
pub fn kind_code(kind: &ObjectKind) -> [f32; COVER - SHAPE] {
    let mut v = [-1f32; COVER - SHAPE];
    match kind {
        ObjectKind::Shape { shape, .. } => {
            let k = ShapeKind::ALL
                .iter()
                .position(|s| s == shape)
                .expect("every shape is listed");
            v[k] = 1.0;
        }
        ObjectKind::Icon { icon } => {
            v[ICON - SHAPE] = 1.0;
            // An unknown icon name does not pass `Scene::validate`; 0 keeps this total.
            let index = crate::assets::icon_index(icon).unwrap_or(0);
            for b in 0..ICON_BITS {
                v[ICON - SHAPE + 1 + b] = if index >> b & 1 == 1 { 1.0 } else { -1.0 };
            }
        }
        ObjectKind::Text { .. } => v[TEXT - SHAPE] = 1.0,
    }
    v
}

/// A centre map estimated from pixels alone, for a picture that has no scene (an img2img or
/// inpainting input): a pixel is an object's where its colour is outside the background
/// family (the world's closed-world rule, [`crate::colors::is_background_like`]), each
/// 8-connected component of such pixels is one object with its centroid as centre and its
/// mean colour; kinds, sizes and rotations are unknown and stay 0.
pub fn estimate_map(width: usize, height: usize, rgb: &[f32], cell: usize) -> Vec<f32> {
    let plane_px = width * height;
    assert_eq!(rgb.len(), 3 * plane_px, "image");
    let figure = crate::semantic::figure_pixels(width, height, rgb);
    let mut out = empty(width, height, cell);
    let (rows, cols) = (height / cell, width / cell);
    let plane = rows * cols;
    fill_cover(&mut out, figure.iter().copied(), width, height, cell);
    // Components smaller than this many pixels are antialiasing or noise, not objects.
    let min_pixels = (cell * cell / 16).max(4);
    let mut seen = vec![false; plane_px];
    let mut stack = Vec::new();
    for start in 0..plane_px {
        if !figure[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut n, mut sx, mut sy, mut col) = (0usize, 0f64, 0f64, [0f64; 3]);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % width, p / width);
            n += 1;
            sx += x as f64 + 0.5;
            sy += y as f64 + 0.5;
            for (c, s) in col.iter_mut().enumerate() {
                *s += rgb[c * plane_px + p] as f64;
            }
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= width as i64 || ny >= height as i64 {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if figure[q] && !seen[q] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        if n < min_pixels {
            continue;
        }
        let (x, y) = ((sx / n as f64) as f32, (sy / n as f64) as f32);
        if let Some(tok) = place(&mut out, x, y, cell, rows, cols) {
            for (c, s) in col.iter().enumerate() {
                out[(6 + c) * plane + tok] = (s / n as f64) as f32;
            }
        }
    }
    out
}

/// A map with no centres and no coverage: −1 in the presence and coverage channels, 0 in the
/// rest.
fn empty(w: usize, h: usize, cell: usize) -> Vec<f32> {
    assert!(cell > 0, "cell must be positive");
    let plane = (h / cell) * (w / cell);
    let mut out = vec![0f32; CHANNELS * plane];
    out[..plane].iter_mut().for_each(|v| *v = -1.0);
    out[COVER * plane..].iter_mut().for_each(|v| *v = -1.0);
    out
}

/// Writes the coverage channel from a per-pixel figure mask.
fn fill_cover(
    out: &mut [f32],
    figure: impl Iterator<Item = bool>,
    w: usize,
    h: usize,
    cell: usize,
) {
    let (rows, cols) = (h / cell, w / cell);
    let plane = rows * cols;
    let mut counts = vec![0usize; plane];
    for (p, f) in figure.enumerate() {
        let (r, c) = ((p / w) / cell, (p % w) / cell);
        if f && r < rows && c < cols {
            counts[r * cols + c] += 1;
        }
    }
    for (tok, n) in counts.iter().enumerate() {
        out[COVER * plane + tok] = 2.0 * *n as f32 / (cell * cell) as f32 - 1.0;
    }
}

/// Marks the cell holding pixel position (x, y) as a centre, writes the offset and clears
/// the object channels an earlier centre in the same cell left; returns the cell's index
/// (`None` for a centre outside the canvas).
fn place(out: &mut [f32], x: f32, y: f32, cell: usize, rows: usize, cols: usize) -> Option<usize> {
    if !(x >= 0.0 && y >= 0.0) {
        return None;
    }
    let (c, r) = ((x / cell as f32) as usize, (y / cell as f32) as usize);
    if r >= rows || c >= cols {
        return None;
    }
    let plane = rows * cols;
    let tok = r * cols + c;
    let half = cell as f32 / 2.0;
    out[tok] = 1.0;
    for ch in 1..COVER {
        out[ch * plane + tok] = 0.0;
    }
    out[plane + tok] = ((x - (c as f32 * cell as f32 + half)) / half).clamp(-1.0, 1.0);
    out[2 * plane + tok] = ((y - (r as f32 * cell as f32 + half)) / half).clamp(-1.0, 1.0);
    Some(tok)
}

/// The nominal colour of an object (icons have none: 0).
fn own_colour(kind: &ObjectKind) -> [f32; 3] {
    match kind {
        ObjectKind::Shape { color, .. } | ObjectKind::Text { color, .. } => {
            color.rgb().map(|v| v as f32 / 127.5 - 1.0)
        }
        ObjectKind::Icon { .. } => [0.0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colors::{BgColor, Color};
    use crate::render::Renderer;
    use crate::scene::{Background, Object};

    fn planar(scene: &Scene) -> Vec<f32> {
        crate::render::planar(&Renderer::new().render(scene).unwrap())
    }

    fn scene(objects: Vec<Object>) -> Scene {
        Scene {
            width: 128,
            height: 128,
            background: Background::Solid {
                color: BgColor::White,
            },
            objects,
        }
    }

    #[test]
    fn a_square_and_an_icon_give_hand_computed_channels() {
        // 128² canvas, cells of 32 px (4×4). A large red square centred at pixel (48, 40):
        // cell (row 1, col 1), offset (48 − 48, 40 − 48) / 16 = (0, −0.5). An icon at
        // (0.9, 0.1) of the canvas, pixel (115.2, 12.8): cell (0, 3), offset
        // ((115.2 − 112) / 16, (12.8 − 16) / 16) = (0.2, −0.2).
        let square = Object {
            kind: ObjectKind::Shape {
                shape: ShapeKind::Square,
                color: Color::Red,
            },
            size: SizeClass::Large,
            center: [48.0 / 128.0, 40.0 / 128.0],
            rotation: 90.0,
            scale: 1.0,
        };
        let icon_name = crate::assets::icon_name(5);
        let icon = Object {
            kind: ObjectKind::Icon {
                icon: icon_name.to_string(),
            },
            size: SizeClass::Small,
            center: [0.9, 0.1],
            rotation: 0.0,
            scale: 1.0,
        };
        let s = scene(vec![square, icon]);
        let m = centre_map(&s, &planar(&s), 32).unwrap();
        let plane = 16;
        let at = |ch: usize, r: usize, c: usize| m[ch * plane + r * 4 + c];
        // The square's cell.
        assert_eq!(at(0, 1, 1), 1.0);
        assert_eq!(at(1, 1, 1), 0.0);
        assert_eq!(at(2, 1, 1), -0.5);
        assert_eq!(at(3, 1, 1), 1.0);
        assert!(at(4, 1, 1).abs() < 1e-6 && (at(5, 1, 1) - 1.0).abs() < 1e-6);
        let [r, g, b] = Color::Red.rgb().map(|v| v as f32 / 127.5 - 1.0);
        assert!((at(6, 1, 1) - r).abs() < 1e-4, "{} vs {r}", at(6, 1, 1));
        assert!((at(7, 1, 1) - g).abs() < 1e-4 && (at(8, 1, 1) - b).abs() < 1e-4);
        let square_index = ShapeKind::ALL
            .iter()
            .position(|k| *k == ShapeKind::Square)
            .unwrap();
        for k in 0..8 {
            let want = if k == square_index { 1.0 } else { -1.0 };
            assert_eq!(at(SHAPE + k, 1, 1), want, "shape channel {k}");
        }
        assert_eq!(at(ICON, 1, 1), -1.0);
        assert_eq!(at(TEXT, 1, 1), -1.0);
        // The icon's cell: index 5 = bits 1, 0, 1, 0, 0, 0, 0.
        assert_eq!(at(0, 0, 3), 1.0);
        assert!((at(1, 0, 3) - 0.2).abs() < 1e-5 && (at(2, 0, 3) + 0.2).abs() < 1e-5);
        assert_eq!(at(3, 0, 3), -1.0);
        assert_eq!(at(ICON, 0, 3), 1.0);
        let bits: Vec<f32> = (0..ICON_BITS).map(|b| at(ICON + 1 + b, 0, 3)).collect();
        assert_eq!(bits, [1.0, -1.0, 1.0, -1.0, -1.0, -1.0, -1.0]);
        for k in 0..8 {
            assert_eq!(at(SHAPE + k, 0, 3), -1.0);
        }
        // A cell with no centre: presence −1, the object channels 0.
        assert_eq!(at(0, 3, 0), -1.0);
        for ch in 1..COVER {
            assert_eq!(at(ch, 3, 0), 0.0, "channel {ch}");
            assert_eq!(at(ch, 0, 0), 0.0, "channel {ch}");
        }
        // Coverage: the square (half side 0.84 · 0.34 · 128 / 2 ≈ 18.3 px) spans x
        // 29.7..66.3, y 21.7..58.3, so cell (1, 1) (32..64 both axes) is covered except its
        // last rows y 58.3..64: share (58.3 − 32) / 32 ≈ 0.82. Cell (3, 0) is empty.
        assert_eq!(at(COVER, 3, 0), -1.0);
        let share = (at(COVER, 1, 1) + 1.0) / 2.0;
        assert!((share - 0.82).abs() < 0.03, "share {share}");
    }

    #[test]
    fn the_later_of_two_centres_in_one_cell_is_stated() {
        let obj = |shape, x| Object {
            kind: ObjectKind::Shape {
                shape,
                color: Color::Blue,
            },
            size: SizeClass::Small,
            center: [x, 0.5],
            rotation: 0.0,
            scale: 1.0,
        };
        let s = scene(vec![
            obj(ShapeKind::Circle, 0.53),
            obj(ShapeKind::Star, 0.56),
        ]);
        let m = centre_map(&s, &planar(&s), 32).unwrap();
        let star = ShapeKind::ALL
            .iter()
            .position(|k| *k == ShapeKind::Star)
            .unwrap();
        let circle = ShapeKind::ALL
            .iter()
            .position(|k| *k == ShapeKind::Circle)
            .unwrap();
        let tok = 2 * 4 + 2;
        assert_eq!(m[tok], 1.0);
        assert_eq!(m[(SHAPE + star) * 16 + tok], 1.0);
        assert_eq!(m[(SHAPE + circle) * 16 + tok], -1.0);
        assert_eq!(m.iter().take(16).filter(|v| **v == 1.0).count(), 1);
    }

    #[test]
    fn the_estimate_from_pixels_finds_each_object_centre() {
        let obj = |shape, color, c: [f32; 2]| Object {
            kind: ObjectKind::Shape { shape, color },
            size: SizeClass::Medium,
            center: c,
            rotation: 0.0,
            scale: 1.0,
        };
        let s = scene(vec![
            obj(ShapeKind::Circle, Color::Blue, [0.3, 0.3]),
            obj(ShapeKind::Square, Color::Green, [0.7, 0.75]),
        ]);
        let rgb = planar(&s);
        let exact = centre_map(&s, &rgb, 32).unwrap();
        let est = estimate_map(128, 128, &rgb, 32);
        let plane = 16;
        // The same cells hold centres, with the same offsets and colours within a pixel's
        // worth; kinds are unknown.
        for tok in 0..plane {
            assert_eq!(exact[tok], est[tok], "presence of cell {tok}");
            if exact[tok] == 1.0 {
                for ch in 1..3 {
                    let (a, b) = (exact[ch * plane + tok], est[ch * plane + tok]);
                    assert!((a - b).abs() < 1.5 / 16.0, "offset {ch}: {a} vs {b}");
                }
                for ch in 6..9 {
                    let (a, b) = (exact[ch * plane + tok], est[ch * plane + tok]);
                    assert!((a - b).abs() < 0.1, "colour {ch}: {a} vs {b}");
                }
                for ch in SHAPE..COVER {
                    assert_eq!(est[ch * plane + tok], 0.0);
                }
            }
            let (a, b) = (exact[COVER * plane + tok], est[COVER * plane + tok]);
            assert!((a - b).abs() < 0.1, "coverage of cell {tok}: {a} vs {b}");
        }
        assert_eq!(est[..plane].iter().filter(|v| **v == 1.0).count(), 2);
    }
}
