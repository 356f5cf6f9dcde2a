//! Vendored assets, embedded in the binary: Fluent UI emoji (flat style, MIT) and
//! DejaVu Sans Bold (Bitstream Vera / DejaVu licence). Licence files sit beside them
//! under `assets/`.

use std::sync::OnceLock;

use resvg::tiny_skia::{Pixmap, Transform};
use resvg::usvg;

#[path = "icon_list.rs"]
mod icon_list;

use crate::WorldError;

/// The text font.
pub static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold.ttf");

/// Number of icon concepts.
pub fn icon_count() -> usize {
    icon_list::ICONS.len()
}

/// Icon identifiers (file stems such as `red-apple`), in a fixed order.
pub fn icon_names() -> impl Iterator<Item = &'static str> {
    icon_list::ICONS.iter().map(|(n, _)| *n)
}

pub fn icon_name(index: usize) -> &'static str {
    icon_list::ICONS[index].0
}

pub fn icon_index(name: &str) -> Option<usize> {
    icon_list::ICONS.iter().position(|(n, _)| *n == name)
}

/// The words captions use for an icon (`red-apple` → `red apple`).
pub fn icon_words(name: &str) -> String {
    match name {
        "t-rex" | "jack-o-lantern" => name.to_string(),
        _ => name.replace('-', " "),
    }
}

/// Rasterised resolutions kept per icon; drawing picks the smallest one at least as large as
/// the target, so resampling never shrinks by more than 2x.
pub const ICON_LEVELS: [u32; 4] = [32, 64, 128, 256];

/// An icon rasterised once at each of [`ICON_LEVELS`].
pub struct IconMips {
    pub levels: Vec<Pixmap>,
}

impl IconMips {
    /// The level to draw at `px` pixels.
    pub fn for_size(&self, px: f32) -> &Pixmap {
        self.levels
            .iter()
            .find(|p| p.width() as f32 >= px)
            .unwrap_or_else(|| self.levels.last().expect("levels"))
    }
}

fn rasterise(name: &str, svg: &[u8]) -> Result<IconMips, WorldError> {
    let err = |e: String| WorldError::IconRaster(name.to_string(), e);
    let tree =
        usvg::Tree::from_data(svg, &usvg::Options::default()).map_err(|e| err(e.to_string()))?;
    let size = tree.size();
    let mut levels = Vec::new();
    for px in ICON_LEVELS {
        let mut pm = Pixmap::new(px, px).ok_or_else(|| err("empty pixmap".into()))?;
        let s = px as f32 / size.width().max(size.height());
        let dx = (px as f32 - size.width() * s) / 2.0;
        let dy = (px as f32 - size.height() * s) / 2.0;
        resvg::render(
            &tree,
            Transform::from_row(s, 0.0, 0.0, s, dx, dy),
            &mut pm.as_mut(),
        );
        levels.push(pm);
    }
    Ok(IconMips { levels })
}

/// The cached rasterisations of icon `index` (rasterised on first use).
pub fn icon(index: usize) -> &'static IconMips {
    static CACHE: OnceLock<Vec<OnceLock<IconMips>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| (0..icon_count()).map(|_| OnceLock::new()).collect());
    cache[index].get_or_init(|| {
        let (name, svg) = icon_list::ICONS[index];
        // The vendored set is fixed and checked by a test, so a failure here is a build defect.
        rasterise(name, svg).unwrap_or_else(|e| panic!("vendored icon broken: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_icon_rasterises_with_content() {
        assert!(icon_count() >= 100, "only {} icons", icon_count());
        for (i, (name, svg)) in icon_list::ICONS.iter().enumerate() {
            let mips = rasterise(name, svg).unwrap();
            let pm = &mips.levels[1];
            let opaque = pm.data().chunks(4).filter(|p| p[3] > 128).count();
            let frac = opaque as f32 / (pm.width() * pm.height()) as f32;
            assert!(frac > 0.15, "icon {i} {name} is almost empty ({frac})");
        }
        let names: std::collections::HashSet<_> = icon_names().collect();
        assert_eq!(names.len(), icon_count(), "duplicate icon names");
    }
}
