//! Semantic maps: per latent cell, what the scene holds there, from its exact masks.
//!
//! The native DiT can denoise these channels jointly with the autoencoder's latents (as ReDi
//! does with representation features): a layout is a low-dimensional, smooth signal that the
//! model learns long before it learns to draw the pixels of an object, and denoising both at
//! the same time lets the latents follow it. The channels are dropped before decoding.
//!
//! For a cell of `cell × cell` pixels (the autoencoder's compression), the channels are:
//! - `SUB × SUB` occupancy channels: the share of each sub-cell covered by objects, as
//!   `2·share − 1` (−1 empty, +1 covered);
//! - 3 colour channels: the mean RGB (in −1..1) of the object pixels of the cell, 0 where
//!   the cell holds none;
//! - `KIND_DIMS` kind channels: a fixed ±1 code of the kind (shape name, icon name, or text)
//!   of the object covering most of the cell, 0 where none does.

use crate::render::object_ids;
use crate::scene::{ObjectKind, Scene};
use crate::seed::mix64;
use crate::WorldError;

/// Sub-cells per cell side.
pub const SUB: usize = 4;
/// Channels of the kind code.
pub const KIND_DIMS: usize = 8;
/// Channels of a semantic map.
pub const CHANNELS: usize = SUB * SUB + 3 + KIND_DIMS;

/// Which semantic map a model denoises and its decoder reads (`semantic_map` in a training
/// config, `model.json` and `ae.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// Per cell, the object coverage of its sub-cells, colour and kind (this module).
    #[default]
    Occupancy,
    /// Per cell, the object whose centre lies in it ([`crate::centres`]).
    Centres,
}

impl MapKind {
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Occupancy => "occupancy",
            MapKind::Centres => "centres",
        }
    }

    /// Channels of a map of this kind.
    pub fn channels(self) -> usize {
        match self {
            MapKind::Occupancy => CHANNELS,
            MapKind::Centres => crate::centres::CHANNELS,
        }
    }

    /// The exact map of `scene` (see [`semantic_map`]).
    pub fn map(self, scene: &Scene, rgb: &[f32], cell: usize) -> Result<Vec<f32>, WorldError> {
        match self {
            MapKind::Occupancy => semantic_map(scene, rgb, cell),
            MapKind::Centres => crate::centres::centre_map(scene, rgb, cell),
        }
    }

    /// The map estimated from pixels alone (see [`estimate_map`]).
    pub fn estimate(self, width: usize, height: usize, rgb: &[f32], cell: usize) -> Vec<f32> {
        match self {
            MapKind::Occupancy => estimate_map(width, height, rgb, cell),
            MapKind::Centres => crate::centres::estimate_map(width, height, rgb, cell),
        }
    }
}

/// The kind code of an object: `KIND_DIMS` values of ±1. Shape `k` (of the 8) has +1 at
/// position `k` only, text has +1 everywhere, and an icon has a code from a hash of its name
/// with 2 to 6 entries at +1, so shapes and text never share a code with anything.
pub fn kind_code(kind: &ObjectKind) -> [f32; KIND_DIMS] {
    let bits: u64 = match kind {
        ObjectKind::Shape { shape, .. } => {
            let k = crate::scene::ShapeKind::ALL
                .iter()
                .position(|s| s == shape)
                .expect("every shape is listed");
            1 << k
        }
        ObjectKind::Text { .. } => (1 << KIND_DIMS) - 1,
        ObjectKind::Icon { icon } => {
            // FNV-1a then SplitMix: stable across platforms and releases.
            let mut h: u64 = 0xCBF2_9CE4_8422_2325;
            for b in icon.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01B3);
            }
            let mut bits = mix64(h);
            while !(2..=6).contains(&(bits & ((1 << KIND_DIMS) - 1)).count_ones()) {
                bits = mix64(bits);
            }
            bits
        }
    };
    std::array::from_fn(|i| if bits >> i & 1 == 1 { 1.0 } else { -1.0 })
}

/// The semantic map of `scene` over cells of `cell` pixels: `CHANNELS × rows × cols` values,
/// channel-major, with `rows = height / cell`, `cols = width / cell`. `rgb` is the scene's
/// render as planar `3 × height × width` values in −1..1 (the training images).
pub fn semantic_map(scene: &Scene, rgb: &[f32], cell: usize) -> Result<Vec<f32>, WorldError> {
    let ids = object_ids(scene)?;
    Ok(map_from_ids(scene, &ids, rgb, cell))
}

/// [`semantic_map`] from a precomputed [`object_ids`] map.
pub fn map_from_ids(scene: &Scene, ids: &[u16], rgb: &[f32], cell: usize) -> Vec<f32> {
    let codes: Vec<[f32; KIND_DIMS]> = scene.objects.iter().map(|o| kind_code(&o.kind)).collect();
    let (w, h) = (scene.width as usize, scene.height as usize);
    map_from_ids_with_codes(w, h, ids, rgb, cell, &codes)
}

/// The map from an id map whose id `k + 1` has kind code `codes[k]`.
fn map_from_ids_with_codes(
    w: usize,
    h: usize,
    ids: &[u16],
    rgb: &[f32],
    cell: usize,
    codes: &[[f32; KIND_DIMS]],
) -> Vec<f32> {
    assert!(
        cell.is_multiple_of(SUB) && cell > 0,
        "cell {cell} must be a multiple of {SUB}"
    );
    assert_eq!(ids.len(), w * h, "object ids");
    assert_eq!(rgb.len(), 3 * w * h, "image");
    let (rows, cols) = (h / cell, w / cell);
    let plane = rows * cols;
    let mut out = vec![0f32; CHANNELS * plane];
    let sub = cell / SUB;
    let mut counts = vec![0usize; codes.len() + 1];
    for r in 0..rows {
        for c in 0..cols {
            let tok = r * cols + c;
            let mut sum = [0f32; 3];
            counts.iter_mut().for_each(|n| *n = 0);
            for sr in 0..SUB {
                for sc in 0..SUB {
                    let mut covered = 0usize;
                    for y in r * cell + sr * sub..r * cell + (sr + 1) * sub {
                        for x in c * cell + sc * sub..c * cell + (sc + 1) * sub {
                            let p = y * w + x;
                            let id = ids[p] as usize;
                            counts[id] += 1;
                            if id != 0 {
                                covered += 1;
                                for (k, s) in sum.iter_mut().enumerate() {
                                    *s += rgb[k * w * h + p];
                                }
                            }
                        }
                    }
                    let share = covered as f32 / (sub * sub) as f32;
                    out[(sr * SUB + sc) * plane + tok] = 2.0 * share - 1.0;
                }
            }
            let figure: usize = counts[1..].iter().sum();
            if figure > 0 {
                for (k, s) in sum.iter().enumerate() {
                    out[(SUB * SUB + k) * plane + tok] = s / figure as f32;
                }
                // The object covering most of the cell (the first of equals).
                let (best, _) =
                    counts[1..]
                        .iter()
                        .enumerate()
                        .fold((0, 0), |m, (i, &n)| if n > m.1 { (i, n) } else { m });
                for (k, v) in codes[best].iter().enumerate() {
                    out[(SUB * SUB + 3 + k) * plane + tok] = *v;
                }
            }
        }
    }
    out
}

/// A semantic map estimated from pixels alone, for a picture that has no scene (an img2img
/// or inpainting input): a pixel is an object's where its colour is outside the background
/// family (the world's closed-world rule, [`crate::colors::is_background_like`]); kinds are
/// unknown, so the kind channels are 0. `rgb` as in [`semantic_map`].
pub fn estimate_map(width: usize, height: usize, rgb: &[f32], cell: usize) -> Vec<f32> {
    let ids: Vec<u16> = figure_pixels(width, height, rgb)
        .into_iter()
        .map(u16::from)
        .collect();
    map_from_ids_with_codes(width, height, &ids, rgb, cell, &[[0.0; KIND_DIMS]])
}

/// Which pixels of a planar `3 × height × width` image in −1..1 are an object's: those whose
/// colour is outside the background family (the world's closed-world rule,
/// [`crate::colors::is_background_like`]).
pub fn figure_pixels(width: usize, height: usize, rgb: &[f32]) -> Vec<bool> {
    let plane = width * height;
    let to_u8 = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    (0..plane)
        .map(|p| {
            let px = [
                to_u8(rgb[p]),
                to_u8(rgb[plane + p]),
                to_u8(rgb[2 * plane + p]),
            ];
            !crate::colors::is_background_like(crate::colors::rgb_to_lab(px))
        })
        .collect()
}

/// The semantic map of an empty canvas (no objects): what a cell of pure background holds.
pub fn empty_cell() -> [f32; CHANNELS] {
    let mut v = [0f32; CHANNELS];
    v[..SUB * SUB].iter_mut().for_each(|x| *x = -1.0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colors::{BgColor, Color};
    use crate::render::Renderer;
    use crate::scene::{Background, Object, ShapeKind, SizeClass};

    fn planar(scene: &Scene) -> Vec<f32> {
        crate::render::planar(&Renderer::new().render(scene).unwrap())
    }

    #[test]
    fn a_square_on_cell_boundaries_gives_hand_computed_channels() {
        // 128² canvas, cells of 32 px (4×4 cells), sub-cells of 8 px. A large square has half
        // side 0.84 · 0.34 · 128 / 2 ≈ 18.3 px; centred at (48, 48) it spans x, y 29.7..66.3:
        // cell (1, 1) (pixels 32..64) is covered completely, cell (0, 0) only in its last
        // sub-cell row/column partly, cells of the last column not at all.
        let red = Object {
            kind: ObjectKind::Shape {
                shape: ShapeKind::Square,
                color: Color::Red,
            },
            size: SizeClass::Large,
            center: [48.0 / 128.0, 48.0 / 128.0],
            rotation: 0.0,
            scale: 1.0,
        };
        let scene = Scene {
            width: 128,
            height: 128,
            background: Background::Solid {
                color: BgColor::White,
            },
            objects: vec![red.clone()],
        };
        let m = semantic_map(&scene, &planar(&scene), 32).unwrap();
        let plane = 16;
        let at = |ch: usize, r: usize, c: usize| m[ch * plane + r * 4 + c];
        // Cell (1, 1): every sub-cell covered, colour red, the square's code.
        for s in 0..16 {
            assert_eq!(at(s, 1, 1), 1.0, "sub-cell {s}");
        }
        let [rr, rg, rb] = Color::Red.rgb().map(|v| v as f32 / 127.5 - 1.0);
        // (a mean of 1024 equal values, summed in f32)
        assert!((at(16, 1, 1) - rr).abs() < 1e-4, "{} vs {rr}", at(16, 1, 1));
        assert!((at(17, 1, 1) - rg).abs() < 1e-4);
        assert!((at(18, 1, 1) - rb).abs() < 1e-4);
        let code = kind_code(&red.kind);
        for (k, v) in code.iter().enumerate() {
            assert_eq!(at(19 + k, 1, 1), *v);
        }
        // Cell (0, 3) and (3, 3): nothing.
        for (r, c) in [(0, 3), (3, 3), (3, 0)] {
            for s in 0..16 {
                assert_eq!(at(s, r, c), -1.0);
            }
            for ch in 16..CHANNELS {
                assert_eq!(at(ch, r, c), 0.0);
            }
        }
        // Cell (0, 0) spans pixels 0..32: the square covers pixels 30 and 31 of each axis
        // (pixel 29 only 28 %), so only its corner sub-cell (24..32 on both axes) holds
        // object pixels, 2×2 of its 8×8.
        let corner = at(15, 0, 0);
        assert!((corner - (2.0 * 4.0 / 64.0 - 1.0)).abs() < 1e-6, "{corner}");
        assert_eq!(at(0, 0, 0), -1.0);
        assert_eq!(at(5, 0, 0), -1.0);
    }

    #[test]
    fn the_estimate_from_pixels_matches_the_exact_map_for_shapes() {
        let scene = Scene {
            width: 128,
            height: 128,
            background: Background::Solid {
                color: BgColor::Cream,
            },
            objects: vec![Object {
                kind: ObjectKind::Shape {
                    shape: ShapeKind::Circle,
                    color: Color::Blue,
                },
                size: SizeClass::Large,
                center: [0.4, 0.6],
                rotation: 0.0,
                scale: 1.0,
            }],
        };
        let rgb = planar(&scene);
        let exact = semantic_map(&scene, &rgb, 32).unwrap();
        let est = estimate_map(128, 128, &rgb, 32);
        let plane = 16;
        // Only antialiased edge pixels may be judged differently: a few of a sub-cell's 64
        // (each moves the value by 2/64); a cell's mean colour moves more where it holds
        // few object pixels, edge pixels being mixed with the background.
        let mut differ = 0;
        for i in 0..(SUB * SUB + 3) * plane {
            let tol = if i < SUB * SUB * plane {
                8.0 / 64.0
            } else {
                0.25
            };
            assert!(
                (exact[i] - est[i]).abs() <= tol + 1e-6,
                "value {i}: {} vs {}",
                exact[i],
                est[i]
            );
            differ += usize::from(exact[i] != est[i]);
        }
        assert!(differ < plane * 4, "{differ} values differ");
        // Cells the circle covers wholly or misses are exact.
        assert!(est[..SUB * SUB * plane].contains(&1.0) && est.contains(&-1.0));
        // Kinds are unknown to the estimate.
        assert!(est[(SUB * SUB + 3) * plane..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn codes_are_fixed_and_differ_between_kinds() {
        let shape = |s| ObjectKind::Shape {
            shape: s,
            color: Color::Blue,
        };
        let a = kind_code(&shape(ShapeKind::Circle));
        assert_eq!(
            a,
            kind_code(&ObjectKind::Shape {
                shape: ShapeKind::Circle,
                color: Color::Red
            })
        );
        let all = ShapeKind::ALL;
        let codes: Vec<_> = all.iter().map(|s| kind_code(&shape(*s))).collect();
        for i in 0..codes.len() {
            for j in i + 1..codes.len() {
                assert_ne!(codes[i], codes[j], "{:?} and {:?}", all[i], all[j]);
            }
        }
        assert!(a.iter().all(|v| v.abs() == 1.0));
    }
}
