//! The two colour families of the world.
//!
//! Objects, icons and text use saturated or dark *object colours*; backgrounds use light,
//! low-chroma *background colours*. The two families are disjoint in CIELAB (see
//! [`is_background_like`]), which is what lets the WorldEval reader separate figure from
//! ground on any background pattern.

use palette::{IntoColor, Lab, Srgb};
use serde::{Deserialize, Serialize};

/// Object colours: ten well-separated named colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Pink,
    Brown,
    Black,
    Gray,
}

impl Color {
    pub const ALL: [Color; 10] = [
        Color::Red,
        Color::Orange,
        Color::Yellow,
        Color::Green,
        Color::Blue,
        Color::Purple,
        Color::Pink,
        Color::Brown,
        Color::Black,
        Color::Gray,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 38, 38],
            Color::Orange => [245, 135, 15],
            Color::Yellow => [240, 205, 0],
            Color::Green => [35, 160, 60],
            Color::Blue => [35, 85, 215],
            Color::Purple => [135, 50, 190],
            Color::Pink => [238, 88, 172],
            Color::Brown => [125, 75, 35],
            Color::Black => [25, 25, 25],
            Color::Gray => [130, 130, 130],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Orange => "orange",
            Color::Yellow => "yellow",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Purple => "purple",
            Color::Pink => "pink",
            Color::Brown => "brown",
            Color::Black => "black",
            Color::Gray => "gray",
        }
    }

    pub fn from_name(s: &str) -> Option<Color> {
        let s = s.trim().to_ascii_lowercase();
        let s = if s == "grey" { "gray".to_string() } else { s };
        Color::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn lab(self) -> [f32; 3] {
        rgb_to_lab(self.rgb())
    }
}

/// Background colours: light pastels, all inside the background region of CIELAB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BgColor {
    White,
    LightGray,
    Cream,
    PaleBlue,
    PalePink,
    PaleGreen,
    PaleYellow,
    Lavender,
}

impl BgColor {
    pub const ALL: [BgColor; 8] = [
        BgColor::White,
        BgColor::LightGray,
        BgColor::Cream,
        BgColor::PaleBlue,
        BgColor::PalePink,
        BgColor::PaleGreen,
        BgColor::PaleYellow,
        BgColor::Lavender,
    ];

    pub fn rgb(self) -> [u8; 3] {
        match self {
            BgColor::White => [255, 255, 255],
            BgColor::LightGray => [228, 228, 228],
            BgColor::Cream => [250, 242, 228],
            BgColor::PaleBlue => [218, 232, 246],
            BgColor::PalePink => [250, 228, 234],
            BgColor::PaleGreen => [222, 242, 222],
            BgColor::PaleYellow => [250, 246, 214],
            BgColor::Lavender => [232, 226, 246],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BgColor::White => "white",
            BgColor::LightGray => "light gray",
            BgColor::Cream => "cream",
            BgColor::PaleBlue => "pale blue",
            BgColor::PalePink => "pale pink",
            BgColor::PaleGreen => "pale green",
            BgColor::PaleYellow => "pale yellow",
            BgColor::Lavender => "lavender",
        }
    }
}

/// sRGB (8 bit) to CIELAB (D65).
pub fn rgb_to_lab(rgb: [u8; 3]) -> [f32; 3] {
    let lab: Lab = Srgb::new(rgb[0], rgb[1], rgb[2])
        .into_format::<f32>()
        .into_linear()
        .into_color();
    [lab.l, lab.a, lab.b]
}

/// Lightness threshold of the background region.
pub const BG_MIN_L: f32 = 80.0;
/// Chroma threshold of the background region.
pub const BG_MAX_CHROMA: f32 = 30.0;

/// True when a CIELAB colour lies in the background region (light and nearly neutral).
/// Every [`BgColor`] and every blend of two of them is inside; every [`Color`] is outside.
pub fn is_background_like(lab: [f32; 3]) -> bool {
    lab[0] >= BG_MIN_L && (lab[1] * lab[1] + lab[2] * lab[2]).sqrt() <= BG_MAX_CHROMA
}

/// Euclidean distance in CIELAB (CIE76 ΔE).
pub fn delta_e(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_disjoint_with_margin() {
        for bg in BgColor::ALL {
            let lab = rgb_to_lab(bg.rgb());
            let chroma = (lab[1] * lab[1] + lab[2] * lab[2]).sqrt();
            assert!(lab[0] >= BG_MIN_L + 5.0, "{bg:?} too dark: {lab:?}");
            assert!(
                chroma <= BG_MAX_CHROMA - 10.0,
                "{bg:?} too colourful: {lab:?}"
            );
            for bg2 in BgColor::ALL {
                let (a, b) = (bg.rgb(), bg2.rgb());
                let mid = [0, 1, 2].map(|i| ((a[i] as u16 + b[i] as u16) / 2) as u8);
                assert!(is_background_like(rgb_to_lab(mid)), "{bg:?}/{bg2:?} blend");
            }
        }
        for c in Color::ALL {
            assert!(!is_background_like(c.lab()), "{c:?} reads as background");
        }
    }

    #[test]
    fn object_colours_are_well_separated() {
        for (i, a) in Color::ALL.iter().enumerate() {
            for b in &Color::ALL[i + 1..] {
                let d = delta_e(a.lab(), b.lab());
                assert!(d > 25.0, "{a:?} and {b:?} only {d:.1} apart");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for c in Color::ALL {
            assert_eq!(Color::from_name(c.name()), Some(c));
        }
        assert_eq!(Color::from_name("Grey"), Some(Color::Gray));
        assert_eq!(Color::from_name("teal"), None);
    }
}
