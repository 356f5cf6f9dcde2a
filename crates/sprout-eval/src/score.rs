//! Scoring rules: how a reading satisfies a prompt's constraints.
//!
//! - present: at least one detected object of the target (and colour, when given);
//! - count: exactly `n` detected objects of the target (and colour) — strict, as in GenEval;
//! - relation: some pair (a, b) of distinct matching objects whose box centres differ by more
//!   than [`POSITION_MARGIN`] of the image side along the relation's axis ("a left of b":
//!   x_b − x_a > 0.1·width; several relations may hold at once);
//! - text: some detected line of text reads exactly the string (case-sensitive; the world's
//!   text is upper-case);
//! - aspect: the image's width/height is nearest, in log space, to the asserted named ratio.

use sprout_world::AspectRatio;

use crate::prompts::{Constraint, Prompt, Relation, Sel, Target};
use crate::reader::{Detection, Reading};
use sprout_world::ObjectKind;

/// Smallest centre offset, as a fraction of the image side, for a spatial relation to hold.
pub const POSITION_MARGIN: f32 = 0.1;

pub fn matches(d: &Detection, s: &Sel) -> bool {
    match (&d.kind, &s.target) {
        (ObjectKind::Shape { shape, color }, Target::Shape { shape: want }) => {
            shape == want && s.color.is_none_or(|c| c == *color)
        }
        (ObjectKind::Icon { icon }, Target::Icon { icon: want }) => {
            icon == want && s.color.is_none()
        }
        _ => false,
    }
}

fn holds(rel: Relation, a: &Detection, b: &Detection) -> bool {
    let dx = b.center[0] - a.center[0];
    let dy = b.center[1] - a.center[1];
    match rel {
        Relation::LeftOf => dx > POSITION_MARGIN,
        Relation::RightOf => -dx > POSITION_MARGIN,
        Relation::Above => dy > POSITION_MARGIN,
        Relation::Below => -dy > POSITION_MARGIN,
    }
}

pub fn check(c: &Constraint, r: &Reading) -> bool {
    match c {
        Constraint::Present { what } => r.objects.iter().any(|d| matches(d, what)),
        Constraint::Count { what, n } => {
            r.objects.iter().filter(|d| matches(d, what)).count() == *n
        }
        Constraint::Relation { a, relation, b } => r.objects.iter().enumerate().any(|(i, da)| {
            matches(da, a)
                && r.objects
                    .iter()
                    .enumerate()
                    .any(|(j, db)| i != j && matches(db, b) && holds(*relation, da, db))
        }),
        Constraint::Text { text } => r
            .objects
            .iter()
            .any(|d| matches!(&d.kind, ObjectKind::Text { text: t, .. } if t == text)),
        Constraint::Aspect { ratio } => AspectRatio::nearest(r.width, r.height) == *ratio,
    }
}

/// Whether every constraint holds, and a description of each that does not.
pub fn check_prompt(p: &Prompt, r: &Reading) -> (bool, Vec<String>) {
    let failed: Vec<String> = p
        .constraints
        .iter()
        .filter(|c| !check(c, r))
        .map(|c| serde_json::to_string(c).unwrap_or_default())
        .collect();
    (failed.is_empty(), failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::detection;
    use sprout_world::{Color, ShapeKind};

    fn shape(shape: ShapeKind, color: Color, cx: f32, cy: f32) -> Detection {
        let (x, y) = ((cx * 100.0) as u32, (cy * 100.0) as u32);
        detection(
            ObjectKind::Shape { shape, color },
            [x - 5, y - 5, x + 5, y + 5],
            100,
            100,
            0.1,
        )
    }

    fn sel(shape: ShapeKind, color: Option<Color>) -> Sel {
        Sel {
            target: Target::Shape { shape },
            color,
        }
    }

    #[test]
    fn rules() {
        let r = Reading {
            width: 100,
            height: 100,
            objects: vec![
                shape(ShapeKind::Circle, Color::Red, 0.2, 0.5),
                shape(ShapeKind::Star, Color::Blue, 0.8, 0.55),
                shape(ShapeKind::Star, Color::Green, 0.5, 0.9),
            ],
        };
        let c = |k, col| Constraint::Present { what: sel(k, col) };
        assert!(check(&c(ShapeKind::Circle, None), &r));
        assert!(check(&c(ShapeKind::Circle, Some(Color::Red)), &r));
        assert!(!check(&c(ShapeKind::Circle, Some(Color::Blue)), &r));
        assert!(!check(&c(ShapeKind::Heart, None), &r));
        let count = |n, col| Constraint::Count {
            what: sel(ShapeKind::Star, col),
            n,
        };
        assert!(check(&count(2, None), &r));
        assert!(!check(&count(3, None), &r));
        assert!(!check(&count(1, None), &r));
        assert!(check(&count(1, Some(Color::Blue)), &r));
        let rel = |a, relation, b| Constraint::Relation {
            a: sel(a, None),
            relation,
            b: sel(b, None),
        };
        assert!(check(
            &rel(ShapeKind::Circle, Relation::LeftOf, ShapeKind::Star),
            &r
        ));
        assert!(!check(
            &rel(ShapeKind::Circle, Relation::RightOf, ShapeKind::Star),
            &r
        ));
        // The green star is below the circle by 0.4; the blue one only by 0.05.
        assert!(check(
            &rel(ShapeKind::Star, Relation::Below, ShapeKind::Circle),
            &r
        ));
        assert!(check(
            &rel(ShapeKind::Circle, Relation::Above, ShapeKind::Star),
            &r
        ));
        // A relation needs two distinct objects.
        assert!(!check(
            &rel(ShapeKind::Circle, Relation::LeftOf, ShapeKind::Circle),
            &r
        ));
        assert!(check(
            &Constraint::Aspect {
                ratio: AspectRatio::Square
            },
            &r
        ));
        assert!(!check(
            &Constraint::Aspect {
                ratio: AspectRatio::R16x9
            },
            &r
        ));
        assert!(!check(&Constraint::Text { text: "CAT".into() }, &r));
    }
}
