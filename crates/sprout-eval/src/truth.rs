//! Ground truth: a scene that satisfies every constraint of a prompt, for the self-check.

use rand::seq::IndexedRandom;
use rand::Rng;
use sprout_world::render::object_half_extent;
use sprout_world::sampler::{random_background, try_place, Overlap, PlacedBox};
use sprout_world::seed::{purpose, rng_for};
use sprout_world::{Color, Object, ObjectKind, Scene, SizeClass};

use crate::prompts::{Constraint, Prompt, Relation, Sel, Target};

fn kind_for<R: Rng>(s: &Sel, rng: &mut R) -> ObjectKind {
    match &s.target {
        Target::Shape { shape } => ObjectKind::Shape {
            shape: *shape,
            color: s
                .color
                .unwrap_or_else(|| *Color::ALL.choose(rng).expect("colours")),
        },
        Target::Icon { icon } => ObjectKind::Icon { icon: icon.clone() },
    }
}

/// Where an object must go: normalised ranges for its centre.
type Zone = ((f32, f32), (f32, f32));
const ANYWHERE: Zone = ((0.0, 1.0), (0.0, 1.0));

struct Builder<R: Rng> {
    scene: Scene,
    boxes: Vec<PlacedBox>,
    rng: R,
}

impl<R: Rng> Builder<R> {
    /// Place an object, shrinking it when there is no room at its size.
    fn add(&mut self, kind: ObjectKind, zone: Zone) -> Option<[f32; 2]> {
        let mut sizes = match kind {
            ObjectKind::Text { .. } => vec![SizeClass::Large, SizeClass::Medium],
            _ => vec![*SizeClass::ALL.choose(&mut self.rng).expect("sizes")],
        };
        sizes.extend([SizeClass::Medium, SizeClass::Small]);
        for size in sizes {
            let mut o = Object {
                kind: kind.clone(),
                size,
                center: [0.5, 0.5],
                rotation: 0.0,
                scale: 1.0,
            };
            let half = object_half_extent(&self.scene, &o);
            let (w, h) = (self.scene.width, self.scene.height);
            if let Some(c) = try_place(
                &mut self.rng,
                w,
                h,
                half,
                &self.boxes,
                Overlap::Forbid,
                zone.0,
                zone.1,
                0,
            ) {
                o.center = c;
                self.boxes.push(PlacedBox {
                    cx: c[0] * w as f32,
                    cy: c[1] * h as f32,
                    hw: half.0,
                    hh: half.1,
                });
                self.scene.objects.push(o);
                return Some(c);
            }
        }
        None
    }
}

/// A scene satisfying `prompt`, drawn deterministically from `seed`.
pub fn ground_truth(prompt: &Prompt, seed: u64, index: u64) -> Scene {
    let mut rng = rng_for(seed, purpose::EVAL_SCENE, index);
    let background = random_background(&mut rng, [0.4, 0.2, 0.2, 0.2]);
    let scene = Scene {
        width: prompt.width,
        height: prompt.height,
        background,
        objects: Vec::new(),
    };
    let mut b = Builder {
        scene,
        boxes: Vec::new(),
        rng,
    };
    for c in &prompt.constraints {
        match c {
            Constraint::Present { what } => {
                let k = kind_for(what, &mut b.rng);
                b.add(k, ANYWHERE);
            }
            Constraint::Count { what, n } => {
                let k = kind_for(what, &mut b.rng);
                for _ in 0..*n {
                    b.add(k.clone(), ANYWHERE);
                }
            }
            Constraint::Relation {
                a,
                relation,
                b: other,
            } => {
                let ka = kind_for(a, &mut b.rng);
                let kb = kind_for(other, &mut b.rng);
                // a goes to the near band, b to the far band on the relation's axis; both share
                // the other axis so no second relation holds by accident.
                let lane = b.rng.random_range(0.35..0.65);
                let lane_zone = (lane - 0.04, lane + 0.04);
                let (za, zb) = match relation {
                    Relation::LeftOf => (((0.0, 0.4), lane_zone), ((0.6, 1.0), lane_zone)),
                    Relation::RightOf => (((0.6, 1.0), lane_zone), ((0.0, 0.4), lane_zone)),
                    Relation::Above => ((lane_zone, (0.0, 0.4)), (lane_zone, (0.6, 1.0))),
                    Relation::Below => ((lane_zone, (0.6, 1.0)), (lane_zone, (0.0, 0.4))),
                };
                b.add(ka, za);
                b.add(kb, zb);
            }
            Constraint::Text { text } => {
                let color = *Color::ALL.choose(&mut b.rng).expect("colours");
                b.add(
                    ObjectKind::Text {
                        text: text.clone(),
                        color,
                    },
                    ANYWHERE,
                );
            }
            Constraint::Aspect { .. } => {}
        }
    }
    b.scene
}
