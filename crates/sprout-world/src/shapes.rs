//! Geometric shapes as unit paths: centred on the origin, fitting the unit circle, y down.
//! The renderer scales them to the object's radius, rotates and translates them.

use resvg::tiny_skia::{FillRule, Path, PathBuilder};

use crate::ShapeKind;

fn polygon(points: &[(f32, f32)]) -> Path {
    let mut pb = PathBuilder::new();
    pb.move_to(points[0].0, points[0].1);
    for &(x, y) in &points[1..] {
        pb.line_to(x, y);
    }
    pb.close();
    pb.finish().expect("non-degenerate polygon")
}

/// Vertices of a regular polygon of circumradius `r`, first vertex straight up.
fn regular(n: usize, r: f32, phase: f32) -> Vec<(f32, f32)> {
    (0..n)
        .map(|i| {
            let a =
                phase + i as f32 * std::f32::consts::TAU / n as f32 - std::f32::consts::FRAC_PI_2;
            (r * a.cos(), r * a.sin())
        })
        .collect()
}

/// The unit path of a shape and the fill rule it needs.
pub fn unit_path(kind: ShapeKind) -> (Path, FillRule) {
    match kind {
        ShapeKind::Circle => (
            PathBuilder::from_circle(0.0, 0.0, 1.0).expect("circle"),
            FillRule::Winding,
        ),
        ShapeKind::Square => (
            polygon(&[(-0.84, -0.84), (0.84, -0.84), (0.84, 0.84), (-0.84, 0.84)]),
            FillRule::Winding,
        ),
        ShapeKind::Triangle => {
            // Equilateral, circumradius 1, centroid shifted down so the bounding box is centred.
            let pts: Vec<_> = regular(3, 1.08, 0.0)
                .into_iter()
                .map(|(x, y)| (x, y + 0.27))
                .collect();
            (polygon(&pts), FillRule::Winding)
        }
        ShapeKind::Star => {
            let outer = regular(5, 1.0, 0.0);
            let inner = regular(5, 0.45, std::f32::consts::PI / 5.0);
            let pts: Vec<_> = outer
                .into_iter()
                .zip(inner)
                .flat_map(|(o, i)| [o, i])
                .map(|(x, y)| (x, y + 0.05))
                .collect();
            (polygon(&pts), FillRule::Winding)
        }
        ShapeKind::Hexagon => (polygon(&regular(6, 1.0, 0.0)), FillRule::Winding),
        ShapeKind::Heart => {
            let mut pb = PathBuilder::new();
            pb.move_to(0.0, 0.92);
            pb.cubic_to(-0.35, 0.62, -1.0, 0.22, -1.0, -0.3);
            pb.cubic_to(-1.0, -0.78, -0.42, -1.02, 0.0, -0.58);
            pb.cubic_to(0.42, -1.02, 1.0, -0.78, 1.0, -0.3);
            pb.cubic_to(1.0, 0.22, 0.35, 0.62, 0.0, 0.92);
            pb.close();
            (pb.finish().expect("heart"), FillRule::Winding)
        }
        ShapeKind::Ring => {
            let mut pb = PathBuilder::new();
            pb.push_circle(0.0, 0.0, 1.0);
            pb.push_circle(0.0, 0.0, 0.56);
            (pb.finish().expect("ring"), FillRule::EvenOdd)
        }
        ShapeKind::Cross => {
            let (a, b) = (0.3, 0.92);
            (
                polygon(&[
                    (-a, -b),
                    (a, -b),
                    (a, -a),
                    (b, -a),
                    (b, a),
                    (a, a),
                    (a, b),
                    (-a, b),
                    (-a, a),
                    (-b, a),
                    (-b, -a),
                    (-a, -a),
                ]),
                FillRule::Winding,
            )
        }
    }
}
