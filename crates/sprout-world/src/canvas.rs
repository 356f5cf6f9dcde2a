//! Canvas sizes, aspect ratios and the 3x3 grid of named regions.

use serde::{Deserialize, Serialize};

use crate::WorldError;

/// The aspect ratios the world knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AspectRatio {
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "4:3")]
    R4x3,
    #[serde(rename = "3:4")]
    R3x4,
    #[serde(rename = "3:2")]
    R3x2,
    #[serde(rename = "2:3")]
    R2x3,
    #[serde(rename = "16:9")]
    R16x9,
    #[serde(rename = "9:16")]
    R9x16,
    #[serde(rename = "2:1")]
    R2x1,
    #[serde(rename = "1:2")]
    R1x2,
}

impl AspectRatio {
    pub const ALL: [AspectRatio; 9] = [
        AspectRatio::Square,
        AspectRatio::R4x3,
        AspectRatio::R3x4,
        AspectRatio::R3x2,
        AspectRatio::R2x3,
        AspectRatio::R16x9,
        AspectRatio::R9x16,
        AspectRatio::R2x1,
        AspectRatio::R1x2,
    ];

    /// (width, height) in ratio units.
    pub fn parts(self) -> (u32, u32) {
        match self {
            AspectRatio::Square => (1, 1),
            AspectRatio::R4x3 => (4, 3),
            AspectRatio::R3x4 => (3, 4),
            AspectRatio::R3x2 => (3, 2),
            AspectRatio::R2x3 => (2, 3),
            AspectRatio::R16x9 => (16, 9),
            AspectRatio::R9x16 => (9, 16),
            AspectRatio::R2x1 => (2, 1),
            AspectRatio::R1x2 => (1, 2),
        }
    }

    pub fn value(self) -> f32 {
        let (w, h) = self.parts();
        w as f32 / h as f32
    }

    pub fn label(self) -> String {
        let (w, h) = self.parts();
        format!("{w}:{h}")
    }

    pub fn parse(s: &str) -> Result<AspectRatio, WorldError> {
        AspectRatio::ALL
            .into_iter()
            .find(|a| a.label() == s.trim())
            .ok_or_else(|| WorldError::UnknownAspect(s.to_string()))
    }

    /// Canvas of about `side`² pixels with both sides multiples of 32 (the autoencoder's
    /// stride), choosing the closest ratio among such sizes.
    pub fn canvas(self, side: u32) -> (u32, u32) {
        let area = (side * side) as f32;
        let r = self.value();
        let mut best = (side, side);
        let mut best_cost = f32::INFINITY;
        for h in (32..=side * 4).step_by(32) {
            for w in (32..=side * 4).step_by(32) {
                let ratio_err = ((w as f32 / h as f32) / r).ln().abs();
                let area_err = ((w * h) as f32 / area).ln().abs();
                let cost = ratio_err * 4.0 + area_err;
                if cost < best_cost {
                    best_cost = cost;
                    best = (w, h);
                }
            }
        }
        best
    }

    /// The named ratio nearest (in log space) to `width / height`.
    pub fn nearest(width: u32, height: u32) -> AspectRatio {
        let r = (width as f32 / height.max(1) as f32).ln();
        *AspectRatio::ALL
            .iter()
            .min_by(|a, b| {
                let da = (a.value().ln() - r).abs();
                let db = (b.value().ln() - r).abs();
                da.total_cmp(&db)
            })
            .expect("non-empty")
    }

    /// Words used in captions and prompts.
    pub fn describe(self) -> &'static str {
        match self {
            AspectRatio::Square => "square",
            AspectRatio::R4x3 | AspectRatio::R3x2 | AspectRatio::R16x9 | AspectRatio::R2x1 => {
                "wide"
            }
            _ => "tall",
        }
    }
}

/// Parse `WxH` (e.g. `256x256`).
pub fn parse_size(s: &str) -> Result<(u32, u32), WorldError> {
    let bad = |why: &str| WorldError::InvalidSize {
        width: 0,
        height: 0,
        why: format!("{s:?}: {why}"),
    };
    let (w, h) = s
        .trim()
        .split_once(['x', 'X'])
        .ok_or_else(|| bad("expected WIDTHxHEIGHT, e.g. 256x256"))?;
    let w: u32 = w.parse().map_err(|_| bad("width is not a number"))?;
    let h: u32 = h.parse().map_err(|_| bad("height is not a number"))?;
    check_size(w, h)?;
    Ok((w, h))
}

pub const MIN_SIDE: u32 = 32;
pub const MAX_SIDE: u32 = 4096;

pub fn check_size(width: u32, height: u32) -> Result<(), WorldError> {
    if !(MIN_SIDE..=MAX_SIDE).contains(&width) || !(MIN_SIDE..=MAX_SIDE).contains(&height) {
        return Err(WorldError::InvalidSize {
            width,
            height,
            why: format!("each side must be between {MIN_SIDE} and {MAX_SIDE} pixels"),
        });
    }
    Ok(())
}

/// A cell of the 3x3 grid, named as captions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    TopLeft,
    Top,
    TopRight,
    Left,
    Center,
    Right,
    BottomLeft,
    Bottom,
    BottomRight,
}

impl Region {
    /// Region of a normalised centre (x, y in 0..1, y down).
    pub fn of(center: [f32; 2]) -> Region {
        let col = ((center[0] * 3.0).floor() as i32).clamp(0, 2);
        let row = ((center[1] * 3.0).floor() as i32).clamp(0, 2);
        [
            [Region::TopLeft, Region::Top, Region::TopRight],
            [Region::Left, Region::Center, Region::Right],
            [Region::BottomLeft, Region::Bottom, Region::BottomRight],
        ][row as usize][col as usize]
    }

    pub fn phrase(self) -> &'static str {
        match self {
            Region::TopLeft => "top left",
            Region::Top => "top",
            Region::TopRight => "top right",
            Region::Left => "left",
            Region::Center => "center",
            Region::Right => "right",
            Region::BottomLeft => "bottom left",
            Region::Bottom => "bottom",
            Region::BottomRight => "bottom right",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvases_are_strided_and_classify_back() {
        for a in AspectRatio::ALL {
            let (w, h) = a.canvas(256);
            assert_eq!(w % 32, 0);
            assert_eq!(h % 32, 0);
            assert_eq!(AspectRatio::nearest(w, h), a, "{a:?} -> {w}x{h}");
            let err = ((w as f32 / h as f32) / a.value()).ln().abs();
            assert!(err < 0.06, "{a:?} -> {w}x{h} is {err} off");
        }
        assert_eq!(AspectRatio::Square.canvas(256), (256, 256));
    }

    #[test]
    fn labels_round_trip() {
        for a in AspectRatio::ALL {
            assert_eq!(AspectRatio::parse(&a.label()).unwrap(), a);
        }
        assert!(AspectRatio::parse("5:4").is_err());
    }

    #[test]
    fn sizes_parse_and_reject() {
        assert_eq!(parse_size("320x192").unwrap(), (320, 192));
        assert!(parse_size("7x7").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("100000x10").is_err());
    }

    #[test]
    fn regions() {
        assert_eq!(Region::of([0.1, 0.1]), Region::TopLeft);
        assert_eq!(Region::of([0.5, 0.5]), Region::Center);
        assert_eq!(Region::of([0.9, 0.5]), Region::Right);
        assert_eq!(Region::of([1.0, 1.0]), Region::BottomRight);
    }
}
