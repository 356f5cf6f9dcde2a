//! Seeded random scenes from a controllable distribution, with their captions.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::assets;
use crate::canvas::AspectRatio;
use crate::captions::{captions, Captions};
use crate::colors::{BgColor, Color};
use crate::render::object_half_extent;
use crate::scene::{Background, Direction, Object, ObjectKind, Scene, ShapeKind, SizeClass};
use crate::seed::{purpose, rng_for};

/// Words text items are drawn from (besides random strings).
pub const WORDS: &[&str] = &[
    "CAT", "DOG", "SUN", "SKY", "RED", "BLUE", "HELLO", "WORLD", "SPROUT", "SEED", "TREE", "STAR",
    "MOON", "RAIN", "LOVE", "OPEN", "STOP", "GO", "YES", "NO", "HI", "OK", "ART", "PLAY", "FISH",
    "BIRD", "CAKE", "MILK", "GOLD", "ZERO", "ONE", "TWO", "TEN", "KING", "BOX", "SALE", "NEW",
    "HOT", "COOL", "WOW", "ZOO", "JAZZ", "MAP", "KEY", "LAMP", "BOOK", "TOY", "HAT", "CUP", "PIE",
    "FROG", "WIND", "SNOW", "LEAF", "ROSE", "MINT", "PLUM", "EXIT", "CAFE", "SHOP", "PARK", "HOME",
    "PIXEL", "DRAW", "PAINT", "QUIZ", "VIBE", "2026", "42", "7", "A1", "X9",
];

/// Where a scene's canvas size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CanvasChoice {
    Fixed {
        width: u32,
        height: u32,
    },
    Aspect {
        ratio: AspectRatio,
    },
    /// Any of the named aspect ratios, uniformly.
    AnyAspect,
    /// Square with probability `square`, else any other named ratio, uniformly (most of a
    /// prompt set is square; every ratio still appears).
    MostlySquare {
        square: f32,
    },
}

/// Whether objects may overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    Forbid,
    Allow,
}

/// The distribution of scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    pub min_objects: usize,
    pub max_objects: usize,
    /// Probability that the scene holds one text item (counted among the objects).
    pub text_prob: f32,
    /// Probability that a non-text object is an icon rather than a shape.
    pub icon_prob: f32,
    /// Probability that an object repeats the kind and colour of an earlier one (counting).
    pub repeat_prob: f32,
    /// Probability that a shape is rotated.
    pub rotate_prob: f32,
    /// Probability that the second object is laid out in a clear spatial relation to the
    /// first (left of, right of, above or below it, on the same lane), for position prompts.
    pub relation_prob: f32,
    /// Probability that a scene is a counting scene: 2 to 4 identical objects and nothing
    /// else, as counting prompts ask for (whatever `max_objects` says).
    pub count_prob: f32,
    pub overlap: Overlap,
    pub canvas: CanvasChoice,
    /// Shorter side used when the canvas comes from an aspect ratio (about side² pixels).
    pub base_side: u32,
    /// Relative weights of solid, gradient, stripes and checker backgrounds.
    pub background_weights: [f32; 4],
    /// Multiplier on every shape's and icon's size-class extent (`Object::scale`).
    pub size_scale: f32,
    /// When non-zero, object centres fall on the multiples of this many pixels (the corners
    /// of an autoencoder's latent cells when it is the autoencoder's stride), so that an
    /// object of one kind, colour and size always has the same latent, wherever it stands.
    pub grid: u32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            min_objects: 1,
            max_objects: 4,
            text_prob: 0.3,
            icon_prob: 0.35,
            repeat_prob: 0.2,
            rotate_prob: 0.15,
            relation_prob: 0.3,
            count_prob: 0.0,
            overlap: Overlap::Forbid,
            canvas: CanvasChoice::Fixed {
                width: 256,
                height: 256,
            },
            base_side: 256,
            background_weights: [0.4, 0.2, 0.2, 0.2],
            size_scale: 1.0,
            grid: 0,
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<(), crate::WorldError> {
        let bad = |m: String| Err(crate::WorldError::InvalidScene(m));
        if self.min_objects == 0 && self.max_objects == 0 {
            return bad("sampler: max_objects must be at least 1".into());
        }
        if self.min_objects > self.max_objects || self.max_objects > crate::scene::MAX_OBJECTS {
            return bad(format!(
                "sampler: need min_objects <= max_objects <= {}, got {}..{}",
                crate::scene::MAX_OBJECTS,
                self.min_objects,
                self.max_objects
            ));
        }
        for (name, p) in [
            ("text_prob", self.text_prob),
            ("icon_prob", self.icon_prob),
            ("repeat_prob", self.repeat_prob),
            ("rotate_prob", self.rotate_prob),
            ("relation_prob", self.relation_prob),
            ("count_prob", self.count_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("sampler: {name} {p} is outside 0..=1"));
            }
        }
        if self
            .background_weights
            .iter()
            .any(|w| w.is_nan() || *w < 0.0)
            || self.background_weights.iter().sum::<f32>() <= 0.0
        {
            return bad("sampler: background_weights must be non-negative and not all zero".into());
        }
        if !crate::scene::SCALE_RANGE.contains(&self.size_scale) {
            return bad(format!(
                "sampler: size_scale {} is outside {}..={}",
                self.size_scale,
                crate::scene::SCALE_RANGE.start(),
                crate::scene::SCALE_RANGE.end()
            ));
        }
        if self.grid > 128 {
            return bad(format!(
                "sampler: grid {} is over 128 pixels (0 turns it off)",
                self.grid
            ));
        }
        if let CanvasChoice::Fixed { width, height } = self.canvas {
            crate::canvas::check_size(width, height)?;
        }
        crate::canvas::check_size(self.base_side, self.base_side)
    }
}

/// One sample of the world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub scene: Scene,
    pub captions: Captions,
}

/// A box in pixels: centre and half extents.
#[derive(Debug, Clone, Copy)]
pub struct PlacedBox {
    pub cx: f32,
    pub cy: f32,
    pub hw: f32,
    pub hh: f32,
}

impl PlacedBox {
    pub fn overlaps(&self, o: &PlacedBox, gap: f32) -> bool {
        (self.cx - o.cx).abs() < self.hw + o.hw + gap
            && (self.cy - o.cy).abs() < self.hh + o.hh + gap
    }
}

/// A multiple of `grid` drawn uniformly from `lo..=hi`, or `None` when there is none.
fn grid_point<R: Rng>(rng: &mut R, lo: f32, hi: f32, grid: u32) -> Option<f32> {
    let g = grid as f32;
    let (first, last) = ((lo / g).ceil() as i64, (hi / g).floor() as i64);
    (first <= last).then(|| rng.random_range(first..=last) as f32 * g)
}

/// Find a centre for a box of half extents `half` inside the canvas (with a margin), within the
/// normalised ranges `xr`, `yr`, not overlapping `boxes` (plus `gap` pixels) unless overlap is
/// allowed, on the multiples of `grid` pixels when `grid` is not 0. `None` when 200 tries
/// found no room.
#[allow(clippy::too_many_arguments)]
pub fn try_place<R: Rng>(
    rng: &mut R,
    width: u32,
    height: u32,
    half: (f32, f32),
    boxes: &[PlacedBox],
    overlap: Overlap,
    xr: (f32, f32),
    yr: (f32, f32),
    grid: u32,
) -> Option<[f32; 2]> {
    let (w, h) = (width as f32, height as f32);
    let margin = 0.03 * w.min(h);
    let gap = 0.05 * w.min(h);
    let lo_x = (half.0 + margin).max(xr.0 * w);
    let hi_x = (w - half.0 - margin).min(xr.1 * w);
    let lo_y = (half.1 + margin).max(yr.0 * h);
    let hi_y = (h - half.1 - margin).min(yr.1 * h);
    if lo_x > hi_x || lo_y > hi_y {
        return None;
    }
    for _ in 0..200 {
        let (cx, cy) = if grid == 0 {
            (rng.random_range(lo_x..=hi_x), rng.random_range(lo_y..=hi_y))
        } else {
            (
                grid_point(rng, lo_x, hi_x, grid)?,
                grid_point(rng, lo_y, hi_y, grid)?,
            )
        };
        let b = PlacedBox {
            cx,
            cy,
            hw: half.0,
            hh: half.1,
        };
        if overlap == Overlap::Allow || !boxes.iter().any(|o| o.overlaps(&b, gap)) {
            return Some([cx / w, cy / h]);
        }
    }
    None
}

pub fn random_background<R: Rng>(rng: &mut R, weights: [f32; 4]) -> Background {
    let total: f32 = weights.iter().sum();
    let mut t = rng.random_range(0.0..total);
    let mut kind = 3;
    for (i, w) in weights.iter().enumerate() {
        if t < *w {
            kind = i;
            break;
        }
        t -= w;
    }
    let a = *BgColor::ALL.choose(rng).expect("colours");
    let mut b = *BgColor::ALL.choose(rng).expect("colours");
    while b == a {
        b = *BgColor::ALL.choose(rng).expect("colours");
    }
    let direction = *Direction::ALL.choose(rng).expect("directions");
    match kind {
        0 => Background::Solid { color: a },
        1 => Background::Gradient {
            from: a,
            to: b,
            direction,
        },
        2 => Background::Stripes {
            a,
            b,
            direction,
            period: rng.random_range(0.08..0.3),
        },
        _ => Background::Checker {
            a,
            b,
            cells: rng.random_range(4..=12),
        },
    }
}

pub fn random_text<R: Rng>(rng: &mut R) -> String {
    if rng.random_bool(0.6) {
        WORDS.choose(rng).expect("words").to_string()
    } else {
        let n = rng.random_range(1..=6);
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..n)
            .map(|_| *CHARS.choose(rng).expect("chars") as char)
            .collect()
    }
}

fn canvas_size<R: Rng>(cfg: &SamplerConfig, rng: &mut R) -> (u32, u32) {
    match cfg.canvas {
        CanvasChoice::Fixed { width, height } => (width, height),
        CanvasChoice::Aspect { ratio } => ratio.canvas(cfg.base_side),
        CanvasChoice::AnyAspect => AspectRatio::ALL
            .choose(rng)
            .expect("ratios")
            .canvas(cfg.base_side),
        CanvasChoice::MostlySquare { square } => {
            if rng.random_bool(square.clamp(0.0, 1.0) as f64) {
                AspectRatio::Square.canvas(cfg.base_side)
            } else {
                let others: Vec<AspectRatio> = AspectRatio::ALL
                    .iter()
                    .copied()
                    .filter(|a| *a != AspectRatio::Square)
                    .collect();
                others.choose(rng).expect("ratios").canvas(cfg.base_side)
            }
        }
    }
}

/// Draw scene `index` of stream `seed`. The same (config, seed, index) always gives the same scene.
pub fn sample_scene(cfg: &SamplerConfig, seed: u64, index: u64) -> Scene {
    let mut rng = rng_for(seed, purpose::SCENE, index);
    let (width, height) = canvas_size(cfg, &mut rng);
    sample_scene_sized(cfg, &mut rng, width, height)
}

/// Draw a scene on a given canvas from `rng`.
pub fn sample_scene_sized<R: Rng>(
    cfg: &SamplerConfig,
    rng: &mut R,
    width: u32,
    height: u32,
) -> Scene {
    let background = random_background(rng, cfg.background_weights);
    let mut scene = Scene {
        width,
        height,
        background,
        objects: Vec::new(),
    };
    let n = rng.random_range(cfg.min_objects.max(1)..=cfg.max_objects.max(1));
    let with_text = rng.random_bool(cfg.text_prob as f64);
    let relational = rng.random_bool(cfg.relation_prob as f64);
    // Drawn only when enabled, so that configs without counting scenes keep their streams.
    let counting = cfg.count_prob > 0.0 && rng.random_bool(cfg.count_prob as f64);
    let (n, with_text) = if counting {
        (
            rng.random_range(2..=4.min(crate::scene::MAX_OBJECTS)),
            false,
        )
    } else {
        (n, with_text)
    };
    let mut boxes: Vec<PlacedBox> = Vec::new();
    for i in 0..n {
        let size = *SizeClass::ALL.choose(rng).expect("sizes");
        let kind = if with_text && i == n - 1 {
            ObjectKind::Text {
                text: random_text(rng),
                color: *Color::ALL.choose(rng).expect("colours"),
            }
        } else if counting && !scene.objects.is_empty() {
            scene.objects[0].kind.clone()
        } else if !scene.objects.is_empty() && rng.random_bool(cfg.repeat_prob as f64) {
            scene.objects[rng.random_range(0..scene.objects.len())]
                .kind
                .clone()
        } else if rng.random_bool(cfg.icon_prob as f64) {
            ObjectKind::Icon {
                icon: assets::icon_name(rng.random_range(0..assets::icon_count())).to_string(),
            }
        } else {
            ObjectKind::Shape {
                shape: *ShapeKind::ALL.choose(rng).expect("shapes"),
                color: *Color::ALL.choose(rng).expect("colours"),
            }
        };
        let rotation = match kind {
            ObjectKind::Shape { shape, .. }
                if shape.symmetry_deg() > 0.0 && rng.random_bool(cfg.rotate_prob as f64) =>
            {
                rng.random_range(5.0..shape.symmetry_deg() - 5.0).round()
            }
            _ => 0.0,
        };
        let scale = match kind {
            ObjectKind::Text { .. } => 1.0,
            _ => cfg.size_scale,
        };
        let mut obj = Object {
            kind,
            size,
            center: [0.5, 0.5],
            rotation,
            scale,
        };
        let half = object_half_extent(&scene, &obj);
        let mut zones = match scene.objects.first() {
            Some(first) if scene.objects.len() == 1 && relational => {
                relation_zones(first.center, rng)
            }
            _ => Vec::new(),
        };
        zones.push(((0.0, 1.0), (0.0, 1.0)));
        let placed = zones.into_iter().find_map(|(xr, yr)| {
            try_place(
                rng,
                width,
                height,
                half,
                &boxes,
                cfg.overlap,
                xr,
                yr,
                cfg.grid,
            )
        });
        if let Some(c) = placed {
            obj.center = c;
            boxes.push(PlacedBox {
                cx: c[0] * width as f32,
                cy: c[1] * height as f32,
                hw: half.0,
                hh: half.1,
            });
            scene.objects.push(obj);
        }
    }
    scene
}

/// Centre ranges that put an object clearly left of, right of, above or below `anchor`
/// (at least 0.2 of the canvas away on that axis, within 0.05 on the other), in random order.
fn relation_zones<R: Rng>(anchor: [f32; 2], rng: &mut R) -> Vec<((f32, f32), (f32, f32))> {
    let lane = |v: f32| ((v - 0.05).max(0.0), (v + 0.05).min(1.0));
    let before = |v: f32| (0.0, (v - 0.2).max(0.0));
    let after = |v: f32| ((v + 0.2).min(1.0), 1.0);
    let mut zones = vec![
        (before(anchor[0]), lane(anchor[1])),
        (after(anchor[0]), lane(anchor[1])),
        (lane(anchor[0]), before(anchor[1])),
        (lane(anchor[0]), after(anchor[1])),
    ];
    zones.shuffle(rng);
    zones
}

/// Draw sample `index` (scene and captions) of stream `seed`.
pub fn sample(cfg: &SamplerConfig, seed: u64, index: u64) -> Sample {
    with_captions(sample_scene(cfg, seed, index), seed, index)
}

/// Draw sample `index` of stream `seed` on a given canvas (batches of one shape use this).
pub fn sample_sized(cfg: &SamplerConfig, seed: u64, index: u64, width: u32, height: u32) -> Sample {
    let mut rng = rng_for(seed, purpose::SCENE, index);
    with_captions(
        sample_scene_sized(cfg, &mut rng, width, height),
        seed,
        index,
    )
}

fn with_captions(scene: Scene, seed: u64, index: u64) -> Sample {
    let mut rng = rng_for(seed, purpose::CAPTION, index);
    let captions = captions(&scene, &mut rng);
    Sample { scene, captions }
}

/// The canvas of batch `batch`: every sample of a batch shares it.
pub fn batch_canvas(cfg: &SamplerConfig, seed: u64, batch: u64) -> (u32, u32) {
    canvas_size(cfg, &mut rng_for(seed, purpose::BATCH, batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let cfg = SamplerConfig::default();
        let a = sample(&cfg, 7, 3);
        let b = sample(&cfg, 7, 3);
        assert_eq!(a.scene, b.scene);
        assert_eq!(a.captions, b.captions);
        let c = sample(&cfg, 7, 4);
        assert_ne!(a.scene, c.scene);
    }

    #[test]
    fn respects_config() {
        let cfg = SamplerConfig {
            min_objects: 2,
            max_objects: 3,
            text_prob: 0.0,
            canvas: CanvasChoice::AnyAspect,
            ..SamplerConfig::default()
        };
        let mut shapes_seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let s = sample_scene(&cfg, 1, i);
            s.validate().unwrap();
            assert!(s.objects.len() <= 3 && !s.objects.is_empty());
            assert!(s
                .objects
                .iter()
                .all(|o| !matches!(o.kind, ObjectKind::Text { .. })));
            // No overlap under the default policy.
            let boxes: Vec<_> = s
                .objects
                .iter()
                .map(|o| {
                    let h = object_half_extent(&s, o);
                    PlacedBox {
                        cx: o.center[0] * s.width as f32,
                        cy: o.center[1] * s.height as f32,
                        hw: h.0,
                        hh: h.1,
                    }
                })
                .collect();
            for (i, a) in boxes.iter().enumerate() {
                for b in &boxes[i + 1..] {
                    assert!(!a.overlaps(b, 0.0));
                }
            }
            for o in &s.objects {
                if let ObjectKind::Shape { shape, .. } = o.kind {
                    shapes_seen.insert(shape);
                }
            }
        }
        assert_eq!(shapes_seen.len(), ShapeKind::ALL.len());
        // With relation_prob = 1, the first two objects share a lane and stand apart on the other axis.
        let rel = SamplerConfig {
            min_objects: 2,
            max_objects: 2,
            relation_prob: 1.0,
            text_prob: 0.0,
            ..cfg.clone()
        };
        let mut related = 0;
        for i in 0..200 {
            let s = sample_scene(&rel, 5, i);
            if s.objects.len() == 2 {
                let (a, b) = (s.objects[0].center, s.objects[1].center);
                let (dx, dy) = ((a[0] - b[0]).abs(), (a[1] - b[1]).abs());
                related += ((dx >= 0.2 && dy <= 0.05) || (dy >= 0.2 && dx <= 0.05)) as usize;
            }
        }
        assert!(
            related >= 150,
            "only {related} of 200 scenes laid out in a relation"
        );
        assert!(SamplerConfig {
            min_objects: 5,
            max_objects: 2,
            ..SamplerConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn grid_and_scale() {
        let cfg = SamplerConfig {
            min_objects: 1,
            max_objects: 3,
            text_prob: 0.3,
            size_scale: 1.5,
            grid: 32,
            canvas: CanvasChoice::AnyAspect,
            ..SamplerConfig::default()
        };
        cfg.validate().unwrap();
        let mut placed = 0;
        for i in 0..300 {
            let s = sample_scene(&cfg, 3, i);
            s.validate().unwrap();
            for o in &s.objects {
                let (x, y) = (o.center[0] * s.width as f32, o.center[1] * s.height as f32);
                // Every centre is a multiple of 32 pixels (within f32 rounding of the
                // normalised centre).
                assert!((x / 32.0 - (x / 32.0).round()).abs() < 1e-3, "{x}");
                assert!((y / 32.0 - (y / 32.0).round()).abs() < 1e-3, "{y}");
                let want = match o.kind {
                    ObjectKind::Text { .. } => 1.0,
                    _ => 1.5,
                };
                assert_eq!(o.scale, want);
                let r = o.radius(&s);
                if !matches!(o.kind, ObjectKind::Text { .. }) {
                    assert_eq!(r, o.size.extent() * 1.5 * s.min_side() / 2.0);
                    // Inside the canvas.
                    assert!(x - r >= 0.0 && x + r <= s.width as f32);
                    assert!(y - r >= 0.0 && y + r <= s.height as f32);
                }
                placed += 1;
            }
        }
        assert!(placed > 300, "{placed} objects in 300 scenes");
        // The default config draws as before: scale 1, centres anywhere.
        let s = sample_scene(&SamplerConfig::default(), 3, 0);
        assert!(s.objects.iter().all(|o| o.scale == 1.0));
        let bad = |c: SamplerConfig| c.validate().unwrap_err().to_string();
        assert!(bad(SamplerConfig {
            size_scale: 5.0,
            ..SamplerConfig::default()
        })
        .contains("size_scale"));
        assert!(bad(SamplerConfig {
            grid: 500,
            ..SamplerConfig::default()
        })
        .contains("grid"));
    }
}
