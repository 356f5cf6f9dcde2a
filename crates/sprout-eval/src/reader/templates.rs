//! The template bank: every shape (at every rotation step over its symmetry period), every
//! glyph of the font and every icon, rendered by the world's own renderer and passed through
//! the same segmentation and resampling as the images being read.

use std::sync::OnceLock;

use sprout_world::colors::{delta_e, is_background_like};
use sprout_world::scene::Background;
use sprout_world::{
    assets, BgColor, Color, Object, ObjectKind, Renderer, Scene, ShapeKind, SizeClass,
};

use super::segment::{observe, Component, LabImage, Observation, GRID};

/// Rotation step of shape templates, in degrees.
pub const ROTATION_STEP: f32 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hyp {
    Shape(ShapeKind),
    Glyph(char),
    Icon(usize),
}

pub struct Template {
    pub hyp: Hyp,
    pub obs: Observation,
}

pub struct Bank {
    pub templates: Vec<Template>,
}

/// Observation of all figure pixels of a rendered image, as one component.
fn observe_all(scene: &Scene) -> Observation {
    let img = Renderer::new()
        .render(scene)
        .expect("template scenes are valid");
    let lab = LabImage::new(&img);
    let mut comp = Component {
        pixels: Vec::new(),
        bbox: [u32::MAX, u32::MAX, 0, 0],
        label: 1,
    };
    let mut labels = vec![0u32; lab.lab.len()];
    for (i, l) in lab.lab.iter().enumerate() {
        if !is_background_like(*l) {
            let (x, y) = (i as u32 % lab.width, i as u32 / lab.width);
            labels[i] = 1;
            comp.pixels.push(i as u32);
            comp.bbox = [
                comp.bbox[0].min(x),
                comp.bbox[1].min(y),
                comp.bbox[2].max(x + 1),
                comp.bbox[3].max(y + 1),
            ];
        }
    }
    observe(&lab, &labels, &comp)
}

fn single(side: u32, kind: ObjectKind, rotation: f32) -> Scene {
    Scene {
        width: side,
        height: side,
        background: Background::Solid {
            color: BgColor::White,
        },
        objects: vec![Object {
            kind,
            size: SizeClass::Large,
            center: [0.5, 0.5],
            rotation,
            scale: 1.0,
        }],
    }
}

pub fn bank() -> &'static Bank {
    static BANK: OnceLock<Bank> = OnceLock::new();
    BANK.get_or_init(|| {
        let mut templates = Vec::new();
        for shape in ShapeKind::ALL {
            let period = shape.symmetry_deg();
            let steps = if period == 0.0 {
                1
            } else {
                (period / ROTATION_STEP).round() as usize
            };
            for s in 0..steps {
                let rot = s as f32 * ROTATION_STEP;
                let obs = observe_all(&single(
                    256,
                    ObjectKind::Shape {
                        shape,
                        color: Color::Black,
                    },
                    rot,
                ));
                templates.push(Template {
                    hyp: Hyp::Shape(shape),
                    obs,
                });
            }
        }
        for c in ('A'..='Z').chain('0'..='9') {
            let obs = observe_all(&single(
                384,
                ObjectKind::Text {
                    text: c.to_string(),
                    color: Color::Black,
                },
                0.0,
            ));
            templates.push(Template {
                hyp: Hyp::Glyph(c),
                obs,
            });
        }
        for i in 0..assets::icon_count() {
            let obs = observe_all(&single(
                256,
                ObjectKind::Icon {
                    icon: assets::icon_name(i).to_string(),
                },
                0.0,
            ));
            templates.push(Template {
                hyp: Hyp::Icon(i),
                obs,
            });
        }
        Bank { templates }
    })
}

/// Weight of the aspect-ratio mismatch |ln(a_obs / a_tpl)| in a cost.
pub const ASPECT_WEIGHT: f32 = 0.5;
/// Weight of the colour term in a cost.
pub const COLOR_WEIGHT: f32 = 0.5;
/// ΔE at which a colour difference counts fully.
pub const COLOR_SCALE: f32 = 40.0;

pub fn aspect_penalty(o: &Observation, t: &Observation) -> f32 {
    ASPECT_WEIGHT * (o.aspect / t.aspect).ln().abs()
}

/// Mean absolute difference of coverage.
pub fn mask_error(o: &Observation, t: &Observation) -> f32 {
    o.alpha
        .iter()
        .zip(&t.alpha)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / (GRID * GRID) as f32
}

/// Colour disagreement where both cover the cell (icons carry their own colours).
pub fn color_error(o: &Observation, t: &Observation) -> f32 {
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..GRID * GRID {
        let w = o.alpha[k].min(t.alpha[k]);
        if w > 0.05 {
            num += w * (delta_e(o.lab[k], t.lab[k]) / COLOR_SCALE).min(1.0);
            den += w;
        }
    }
    if den > 0.0 {
        COLOR_WEIGHT * num / den
    } else {
        COLOR_WEIGHT
    }
}
