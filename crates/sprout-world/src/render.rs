//! The renderer: a [`Scene`] to antialiased pixels, deterministically, with tiny-skia
//! (vector drawing), resvg (icons) and ab_glyph (text outlines).

use image::RgbImage;
use resvg::tiny_skia::{
    Color as SkColor, FilterQuality, GradientStop, LinearGradient, Paint, Pixmap, PixmapPaint,
    Point, Rect, Shader, SpreadMode, Transform,
};

use crate::assets;
use crate::colors::BgColor;
use crate::scene::{Background, Direction, Object, ObjectKind, Scene};
use crate::shapes::unit_path;
use crate::text;
use crate::WorldError;

/// Renders scenes. Holds no mutable state: the icon and glyph caches are global and built once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Renderer;

fn sk(rgb: [u8; 3]) -> SkColor {
    SkColor::from_rgba8(rgb[0], rgb[1], rgb[2], 255)
}

fn solid(rgb: [u8; 3]) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color(sk(rgb));
    p.anti_alias = true;
    p
}

/// Half width and half height, in pixels, of the box an object occupies.
pub fn object_half_extent(scene: &Scene, o: &Object) -> (f32, f32) {
    match &o.kind {
        ObjectKind::Text { text, .. } => {
            let lay = text::layout(text, o.size, scene.width, scene.height);
            (lay.width / 2.0, lay.height / 2.0)
        }
        _ => {
            let r = o.radius(scene);
            // Rotated squares and crosses reach past the unit circle's inscribed box.
            let r = if o.rotation != 0.0 { r * 1.19 } else { r };
            (r, r)
        }
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        Renderer
    }

    /// Render to an RGB image. The scene is validated first.
    pub fn render(&self, scene: &Scene) -> Result<RgbImage, WorldError> {
        let pm = self.render_pixmap(scene)?;
        Ok(pixmap_to_rgb(&pm))
    }

    /// Render to a tiny-skia pixmap (opaque, so premultiplied equals straight RGBA).
    pub fn render_pixmap(&self, scene: &Scene) -> Result<Pixmap, WorldError> {
        scene.validate()?;
        let mut pm =
            Pixmap::new(scene.width, scene.height).ok_or_else(|| WorldError::InvalidSize {
                width: scene.width,
                height: scene.height,
                why: "cannot allocate".into(),
            })?;
        draw_background(&mut pm, &scene.background, scene.min_side());
        for o in &scene.objects {
            draw_object(&mut pm, scene, o);
        }
        Ok(pm)
    }
}

/// Which object each pixel shows: 0 for the background, `k + 1` for `scene.objects[k]`
/// (row-major, `width × height`). Each object is drawn alone with the renderer's own paths
/// and a pixel belongs to it where its coverage is at least one half; later objects are on
/// top, as in [`Renderer::render`]. These are the scene's exact masks, the ground truth the
/// DiT's semantic channels are built from.
pub fn object_ids(scene: &Scene) -> Result<Vec<u16>, WorldError> {
    scene.validate()?;
    let (w, h) = (scene.width, scene.height);
    let mut ids = vec![0u16; (w * h) as usize];
    let mut pm = Pixmap::new(w, h).ok_or_else(|| WorldError::InvalidSize {
        width: w,
        height: h,
        why: "cannot allocate".into(),
    })?;
    for (k, o) in scene.objects.iter().enumerate() {
        pm.fill(SkColor::TRANSPARENT);
        draw_object(&mut pm, scene, o);
        for (id, px) in ids.iter_mut().zip(pm.data().chunks_exact(4)) {
            if px[3] >= 128 {
                *id = k as u16 + 1;
            }
        }
    }
    Ok(ids)
}

/// `img` as planar `3 × height × width` values in −1..1 (the layout of the data stream and
/// of the semantic maps' inputs), written into `out`, which holds exactly that many.
pub fn write_planar(img: &RgbImage, out: &mut [f32]) {
    let plane = (img.width() * img.height()) as usize;
    assert_eq!(out.len(), 3 * plane, "planar buffer");
    for (p, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px.0[c] as f32 / 127.5 - 1.0;
        }
    }
}

/// [`write_planar`] into a new buffer.
pub fn planar(img: &RgbImage) -> Vec<f32> {
    let mut v = vec![0f32; 3 * (img.width() * img.height()) as usize];
    write_planar(img, &mut v);
    v
}

pub fn pixmap_to_rgb(pm: &Pixmap) -> RgbImage {
    let mut rgb = Vec::with_capacity((pm.width() * pm.height() * 3) as usize);
    for px in pm.data().chunks_exact(4) {
        rgb.extend_from_slice(&px[..3]);
    }
    RgbImage::from_raw(pm.width(), pm.height(), rgb).expect("sizes match")
}

fn full_rect(pm: &Pixmap) -> Rect {
    Rect::from_xywh(0.0, 0.0, pm.width() as f32, pm.height() as f32).expect("non-empty canvas")
}

/// Stripes are drawn as vertical bands and then turned: vertical bands stay, horizontal ones
/// swap the axes, diagonal ones rotate by 45° about the centre.
fn direction_transform(dir: Direction, pm: &Pixmap) -> Transform {
    match dir {
        Direction::Vertical => Transform::identity(),
        Direction::Horizontal => Transform::from_row(0.0, 1.0, 1.0, 0.0, 0.0, 0.0),
        Direction::Diagonal => {
            let (w, h) = (pm.width() as f32, pm.height() as f32);
            Transform::from_rotate_at(45.0, w / 2.0, h / 2.0)
        }
    }
}

fn draw_background(pm: &mut Pixmap, bg: &Background, min_side: f32) {
    let (w, h) = (pm.width() as f32, pm.height() as f32);
    match bg {
        Background::Solid { color } => pm.fill(sk(color.rgb())),
        Background::Gradient {
            from,
            to,
            direction,
        } => {
            let (a, b) = match direction {
                Direction::Horizontal => (Point::from_xy(0.0, 0.0), Point::from_xy(w, 0.0)),
                Direction::Vertical => (Point::from_xy(0.0, 0.0), Point::from_xy(0.0, h)),
                Direction::Diagonal => (Point::from_xy(0.0, 0.0), Point::from_xy(w, h)),
            };
            let stops = vec![
                GradientStop::new(0.0, sk(from.rgb())),
                GradientStop::new(1.0, sk(to.rgb())),
            ];
            let shader = LinearGradient::new(a, b, stops, SpreadMode::Pad, Transform::identity())
                .unwrap_or(Shader::SolidColor(sk(from.rgb())));
            let paint = Paint {
                shader,
                anti_alias: true,
                ..Paint::default()
            };
            pm.fill_rect(full_rect(pm), &paint, Transform::identity(), None);
        }
        Background::Stripes {
            a,
            b,
            direction,
            period,
        } => {
            pm.fill(sk(a.rgb()));
            let period_px = (period * min_side).max(2.0);
            let paint = solid(b.rgb());
            let t = direction_transform(*direction, pm);
            // Bands over [-d, 2d] in both axes cover the canvas under any of the three turns.
            let d = (w * w + h * h).sqrt();
            let mut x = -d;
            while x < 2.0 * d {
                if let Some(r) = Rect::from_xywh(x, -d, period_px / 2.0, 3.0 * d) {
                    pm.fill_rect(r, &paint, t, None);
                }
                x += period_px;
            }
        }
        Background::Checker { a, b, cells } => {
            pm.fill(sk(a.rgb()));
            let cell = min_side / *cells as f32;
            let paint = solid(b.rgb());
            let (nx, ny) = ((w / cell).ceil() as i32, (h / cell).ceil() as i32);
            for j in 0..ny {
                for i in 0..nx {
                    if (i + j) % 2 == 1 {
                        if let Some(r) =
                            Rect::from_xywh(i as f32 * cell, j as f32 * cell, cell, cell)
                        {
                            pm.fill_rect(r, &paint, Transform::identity(), None);
                        }
                    }
                }
            }
        }
    }
}

fn draw_object(pm: &mut Pixmap, scene: &Scene, o: &Object) {
    let cx = o.center[0] * scene.width as f32;
    let cy = o.center[1] * scene.height as f32;
    let r = o.radius(scene);
    match &o.kind {
        ObjectKind::Shape { shape, color } => {
            let (path, rule) = unit_path(*shape);
            let t = Transform::from_translate(cx, cy)
                .pre_rotate(o.rotation)
                .pre_scale(r, r);
            pm.fill_path(&path, &solid(color.rgb()), rule, t, None);
        }
        ObjectKind::Icon { icon } => {
            // validate() has checked the name.
            let Some(index) = assets::icon_index(icon) else {
                return;
            };
            let src = assets::icon(index).for_size(2.0 * r);
            let s = 2.0 * r / src.width() as f32;
            let t = Transform::from_translate(cx, cy)
                .pre_rotate(o.rotation)
                .pre_translate(-r, -r)
                .pre_scale(s, s);
            let paint = PixmapPaint {
                quality: FilterQuality::Bicubic,
                ..PixmapPaint::default()
            };
            pm.draw_pixmap(0, 0, src.as_ref(), &paint, t, None);
        }
        ObjectKind::Text { text: s, color } => {
            let lay = text::layout(s, o.size, scene.width, scene.height);
            let paint = solid(color.rgb());
            for (path, t) in text::placed_glyphs(s, &lay, (cx, cy), o.rotation) {
                pm.fill_path(path, &paint, resvg::tiny_skia::FillRule::Winding, t, None);
            }
        }
    }
}

/// A plain canvas of one background colour (used for blank baselines).
pub fn blank(width: u32, height: u32, color: BgColor) -> RgbImage {
    RgbImage::from_pixel(width, height, image::Rgb(color.rgb()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colors::Color;
    use crate::scene::{ShapeKind, SizeClass};

    fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
        img.get_pixel(x, y).0
    }

    #[test]
    fn stripes_cover_the_canvas_in_their_direction() {
        for (dir, w, h) in [
            (Direction::Horizontal, 288, 192),
            (Direction::Vertical, 192, 288),
            (Direction::Diagonal, 384, 192),
        ] {
            let scene = Scene {
                width: w,
                height: h,
                background: Background::Stripes {
                    a: BgColor::White,
                    b: BgColor::PaleBlue,
                    direction: dir,
                    period: 0.25,
                },
                objects: vec![],
            };
            let img = Renderer::new().render(&scene).unwrap();
            let band = (0.25 * w.min(h) as f32) as u32;
            let blue = BgColor::PaleBlue.rgb();
            // Every column (horizontal stripes) or row (vertical stripes) shows both colours.
            let has_blue =
                |pts: Vec<(u32, u32)>| pts.into_iter().any(|(x, y)| px(&img, x, y) == blue);
            match dir {
                Direction::Horizontal => {
                    for x in [0, w / 2, w - 1] {
                        assert!(
                            has_blue((0..h).map(|y| (x, y)).collect()),
                            "{dir:?} column {x}"
                        );
                    }
                    // Constant along a row.
                    assert_eq!(px(&img, 0, band / 4), px(&img, w - 1, band / 4));
                }
                Direction::Vertical => {
                    for y in [0, h / 2, h - 1] {
                        assert!(
                            has_blue((0..w).map(|x| (x, y)).collect()),
                            "{dir:?} row {y}"
                        );
                    }
                    assert_eq!(px(&img, band / 4, 0), px(&img, band / 4, h - 1));
                }
                Direction::Diagonal => {
                    // Half the canvas is blue, and the four corners are covered (not black).
                    let bluish =
                        img.pixels().filter(|p| p.0 == blue).count() as f32 / (w * h) as f32;
                    assert!((0.35..0.65).contains(&bluish), "{bluish}");
                    for (x, y) in [(0, 0), (w - 1, h - 1), (0, h - 1), (w - 1, 0)] {
                        assert!(
                            [blue, [255, 255, 255]].contains(&px(&img, x, y))
                                || px(&img, x, y)[0] > 200
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shapes_land_where_the_scene_says() {
        let scene = Scene {
            width: 256,
            height: 256,
            background: Background::Solid {
                color: BgColor::White,
            },
            objects: vec![Object {
                kind: ObjectKind::Shape {
                    shape: ShapeKind::Square,
                    color: Color::Red,
                },
                size: SizeClass::Large,
                center: [0.25, 0.75],
                rotation: 0.0,
                scale: 1.0,
            }],
        };
        let img = Renderer::new().render(&scene).unwrap();
        assert_eq!(px(&img, 64, 192), Color::Red.rgb());
        assert_eq!(px(&img, 192, 64), [255, 255, 255]);
        // The square's half side is 0.84 of the radius: 0.84 * 0.34 * 256 / 2 ≈ 36.6 px.
        assert_eq!(px(&img, 64 + 35, 192), Color::Red.rgb());
        assert_eq!(px(&img, 64 + 38, 192), [255, 255, 255]);
        // Deterministic.
        assert_eq!(img, Renderer::new().render(&scene).unwrap());
    }

    #[test]
    fn object_ids_are_the_masks_of_the_drawn_objects() {
        let square = |center, color| Object {
            kind: ObjectKind::Shape {
                shape: ShapeKind::Square,
                color,
            },
            size: SizeClass::Large,
            center,
            rotation: 0.0,
            scale: 1.0,
        };
        // Two overlapping squares: the second is drawn on top.
        let scene = Scene {
            width: 256,
            height: 256,
            background: Background::Solid {
                color: BgColor::White,
            },
            objects: vec![
                square([0.25, 0.75], Color::Red),
                square([0.4, 0.75], Color::Blue),
            ],
        };
        let ids = object_ids(&scene).unwrap();
        let at = |x: usize, y: usize| ids[y * 256 + x];
        assert_eq!(at(64, 192), 1);
        assert_eq!(at(64 - 35, 192), 1);
        assert_eq!(at(102, 192), 2);
        assert_eq!(at(192, 64), 0);
        // Every pixel labelled 1 or 2 is that object's colour in the render, and the rest is
        // background.
        let img = Renderer::new().render(&scene).unwrap();
        for (i, p) in img.pixels().enumerate() {
            let want = match ids[i] {
                0 => [255, 255, 255],
                1 => Color::Red.rgb(),
                _ => Color::Blue.rgb(),
            };
            if p.0 != want {
                // Only antialiased edge pixels may differ.
                let (x, y) = (i % 256, i / 256);
                let edge = [(1i32, 0i32), (-1, 0), (0, 1), (0, -1)]
                    .iter()
                    .any(|(dx, dy)| {
                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                        (0..256).contains(&nx)
                            && (0..256).contains(&ny)
                            && ids[ny as usize * 256 + nx as usize] != ids[i]
                    });
                assert!(edge, "pixel ({x}, {y}) id {} shows {:?}", ids[i], p.0);
            }
        }
    }
}
