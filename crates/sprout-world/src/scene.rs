//! The scene specification: what is drawn where, as plain serialisable data.

use serde::{Deserialize, Serialize};

use crate::assets;
use crate::canvas::{check_size, Region};
use crate::colors::{BgColor, Color};
use crate::WorldError;

/// Geometric shape kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
    Star,
    Hexagon,
    Heart,
    Ring,
    Cross,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 8] = [
        ShapeKind::Circle,
        ShapeKind::Square,
        ShapeKind::Triangle,
        ShapeKind::Star,
        ShapeKind::Hexagon,
        ShapeKind::Heart,
        ShapeKind::Ring,
        ShapeKind::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
            ShapeKind::Star => "star",
            ShapeKind::Hexagon => "hexagon",
            ShapeKind::Heart => "heart",
            ShapeKind::Ring => "ring",
            ShapeKind::Cross => "cross",
        }
    }

    pub fn from_name(s: &str) -> Option<ShapeKind> {
        ShapeKind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Rotational symmetry period in degrees (360 when there is none).
    pub fn symmetry_deg(self) -> f32 {
        match self {
            ShapeKind::Circle | ShapeKind::Ring => 0.0,
            ShapeKind::Square | ShapeKind::Cross => 90.0,
            ShapeKind::Triangle => 120.0,
            ShapeKind::Star => 72.0,
            ShapeKind::Hexagon => 60.0,
            ShapeKind::Heart => 360.0,
        }
    }
}

/// Object size classes, as a fraction of the canvas's shorter side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeClass {
    Small,
    Medium,
    Large,
}

impl SizeClass {
    pub const ALL: [SizeClass; 3] = [SizeClass::Small, SizeClass::Medium, SizeClass::Large];

    /// Diameter of a shape or icon, as a fraction of the shorter canvas side.
    pub fn extent(self) -> f32 {
        match self {
            SizeClass::Small => 0.17,
            SizeClass::Medium => 0.25,
            SizeClass::Large => 0.34,
        }
    }

    /// Cap height of text, as a fraction of the shorter canvas side.
    pub fn cap_height(self) -> f32 {
        match self {
            SizeClass::Small => 0.085,
            SizeClass::Medium => 0.11,
            SizeClass::Large => 0.14,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Medium => "medium",
            SizeClass::Large => "large",
        }
    }
}

/// What an object is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObjectKind {
    Shape { shape: ShapeKind, color: Color },
    Icon { icon: String },
    Text { text: String, color: Color },
}

/// One object on the canvas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    #[serde(flatten)]
    pub kind: ObjectKind,
    pub size: SizeClass,
    /// Centre, normalised to the canvas (x right, y down, both in 0..=1).
    pub center: [f32; 2],
    /// Clockwise rotation in degrees.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rotation: f32,
    /// Multiplier on the size class's extent, for shapes and icons (text keeps its cap
    /// height); 1 unless a sampler draws larger objects (`SamplerConfig::size_scale`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

fn one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

/// The range an object's `scale` must lie in.
pub const SCALE_RANGE: std::ops::RangeInclusive<f32> = 0.25..=3.0;

impl Object {
    /// Radius in pixels of a shape or icon on `scene`'s canvas (half its diameter).
    pub fn radius(&self, scene: &Scene) -> f32 {
        self.size.extent() * self.scale * scene.min_side() / 2.0
    }

    pub fn region(&self) -> Region {
        Region::of(self.center)
    }
}

/// Direction of a gradient or stripes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Horizontal,
    Vertical,
    Diagonal,
}

impl Direction {
    pub const ALL: [Direction; 3] = [
        Direction::Horizontal,
        Direction::Vertical,
        Direction::Diagonal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Horizontal => "horizontal",
            Direction::Vertical => "vertical",
            Direction::Diagonal => "diagonal",
        }
    }
}

/// The background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Background {
    Solid {
        color: BgColor,
    },
    Gradient {
        from: BgColor,
        to: BgColor,
        direction: Direction,
    },
    /// Bands of two colours; `period` is one band pair's width as a fraction of the shorter side.
    Stripes {
        a: BgColor,
        b: BgColor,
        direction: Direction,
        period: f32,
    },
    /// A checkerboard with `cells` cells along the shorter side.
    Checker {
        a: BgColor,
        b: BgColor,
        cells: u32,
    },
}

/// A complete scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Background,
    pub objects: Vec<Object>,
}

/// Characters text items may use.
pub fn is_text_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

pub const MAX_TEXT_LEN: usize = 6;
pub const MAX_OBJECTS: usize = 16;

impl Scene {
    /// Parse and validate a scene from JSON.
    pub fn from_json(s: &str) -> Result<Scene, WorldError> {
        let scene: Scene = serde_json::from_str(s)?;
        scene.validate()?;
        Ok(scene)
    }

    /// Check every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), WorldError> {
        check_size(self.width, self.height)?;
        let bad = |m: String| Err(WorldError::InvalidScene(m));
        match &self.background {
            Background::Stripes { period, .. } if !(0.02..=1.0).contains(period) => {
                return bad(format!("background.period {period} is outside 0.02..=1"));
            }
            Background::Checker { cells, .. } if !(2..=64).contains(cells) => {
                return bad(format!("background.cells {cells} is outside 2..=64"));
            }
            _ => {}
        }
        if self.objects.len() > MAX_OBJECTS {
            return bad(format!(
                "{} objects; at most {MAX_OBJECTS}",
                self.objects.len()
            ));
        }
        for (i, o) in self.objects.iter().enumerate() {
            if !o
                .center
                .iter()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
            {
                return bad(format!(
                    "objects[{i}].center {:?} is outside 0..=1",
                    o.center
                ));
            }
            if !o.rotation.is_finite() {
                return bad(format!("objects[{i}].rotation is not a number"));
            }
            if !SCALE_RANGE.contains(&o.scale) {
                return bad(format!(
                    "objects[{i}].scale {} is outside {}..={}",
                    o.scale,
                    SCALE_RANGE.start(),
                    SCALE_RANGE.end()
                ));
            }
            match &o.kind {
                ObjectKind::Icon { icon } => {
                    if assets::icon_index(icon).is_none() {
                        return Err(WorldError::UnknownIcon(icon.clone()));
                    }
                }
                ObjectKind::Text { text, .. } => {
                    if text.is_empty() || text.chars().count() > MAX_TEXT_LEN {
                        return bad(format!(
                            "objects[{i}].text {text:?} must have 1 to {MAX_TEXT_LEN} characters"
                        ));
                    }
                    if let Some(c) = text.chars().find(|c| !is_text_char(*c)) {
                        return bad(format!(
                            "objects[{i}].text {text:?} has {c:?}; only A-Z and 0-9 are allowed"
                        ));
                    }
                }
                ObjectKind::Shape { .. } => {}
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scene serialises")
    }

    pub fn min_side(&self) -> f32 {
        self.width.min(self.height) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene() -> Scene {
        Scene {
            width: 256,
            height: 192,
            background: Background::Stripes {
                a: BgColor::White,
                b: BgColor::PaleBlue,
                direction: Direction::Diagonal,
                period: 0.2,
            },
            objects: vec![
                Object {
                    kind: ObjectKind::Shape {
                        shape: ShapeKind::Star,
                        color: Color::Red,
                    },
                    size: SizeClass::Large,
                    center: [0.3, 0.5],
                    rotation: 12.0,
                    scale: 1.0,
                },
                Object {
                    kind: ObjectKind::Text {
                        text: "CAT".into(),
                        color: Color::Blue,
                    },
                    size: SizeClass::Small,
                    center: [0.7, 0.2],
                    rotation: 0.0,
                    scale: 1.0,
                },
            ],
        }
    }

    #[test]
    fn json_round_trip() {
        let s = scene();
        let back = Scene::from_json(&s.to_json()).unwrap();
        assert_eq!(s, back);
        assert!(s.to_json().contains("\"type\": \"shape\""));
    }

    #[test]
    fn malformed_scenes_name_the_field() {
        let mut s = scene();
        s.objects[1].kind = ObjectKind::Text {
            text: "cat!".into(),
            color: Color::Blue,
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("objects[1].text"), "{e}");
        let mut s = scene();
        s.objects[0].center = [1.5, 0.0];
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("objects[0].center"));
        let mut s = scene();
        s.objects[0].kind = ObjectKind::Icon {
            icon: "no-such-icon".into(),
        };
        assert!(matches!(s.validate(), Err(WorldError::UnknownIcon(_))));
        assert!(Scene::from_json("{\"width\": 3}").is_err());
        let mut s = scene();
        s.width = 5;
        assert!(s.validate().is_err());
    }
}
