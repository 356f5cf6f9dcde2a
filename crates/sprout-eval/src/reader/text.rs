//! Turning per-component candidates into objects: the best single-component reading, and
//! glyphs joined into lines of text.

use super::{detection, icon_kind, Candidate, Detection, ObjectKind, REJECT_COST};

/// Height ratio within which two glyphs may belong to one line.
const LINE_HEIGHT_RATIO: f32 = 1.4;
/// Largest gap between neighbouring glyphs, in glyph heights.
const LINE_GAP: f32 = 0.9;
/// Largest offset of vertical centres, in glyph heights.
const LINE_ALIGN: f32 = 0.3;

fn same_line(a: &Candidate, b: &Candidate) -> bool {
    let (ha, hb) = (a.height(), b.height());
    let ratio = ha.max(hb) / ha.min(hb).max(1.0);
    let h = ha.max(hb);
    let gap = if a.bbox[0] <= b.bbox[0] {
        b.bbox[0] as f32 - a.bbox[2] as f32
    } else {
        a.bbox[0] as f32 - b.bbox[2] as f32
    };
    a.color == b.color
        && ratio <= LINE_HEIGHT_RATIO
        && (a.cy() - b.cy()).abs() <= LINE_ALIGN * h
        && gap <= LINE_GAP * h
}

pub(crate) fn assemble(cands: &[Candidate], w: u32, h: u32) -> Vec<Detection> {
    // First reading: the cheapest hypothesis of each component.
    #[derive(Clone, Copy, PartialEq)]
    enum Pick {
        Shape,
        Glyph,
        Icon,
        None,
    }
    let mut picks: Vec<Pick> = cands
        .iter()
        .map(|c| {
            let best = c.shape.1.min(c.glyph.1).min(c.icon.1);
            if best > REJECT_COST {
                Pick::None
            } else if best == c.glyph.1 {
                Pick::Glyph
            } else if best == c.shape.1 {
                Pick::Shape
            } else {
                Pick::Icon
            }
        })
        .collect();
    // Context: a component that lines up with a glyph and fits a glyph well enough is a glyph
    // too (a lone "O" may fit a ring better, an "A" a triangle), repeated until stable.
    loop {
        let mut changed = false;
        for i in 0..cands.len() {
            if picks[i] == Pick::Glyph || cands[i].glyph.1 > REJECT_COST {
                continue;
            }
            if (0..cands.len())
                .any(|j| j != i && picks[j] == Pick::Glyph && same_line(&cands[i], &cands[j]))
            {
                picks[i] = Pick::Glyph;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out = Vec::new();
    // Lines: connected groups of glyphs under same_line, read left to right.
    let glyphs: Vec<usize> = (0..cands.len())
        .filter(|&i| picks[i] == Pick::Glyph)
        .collect();
    let mut group: Vec<usize> = (0..glyphs.len()).collect();
    fn find(g: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while g[r] != r {
            r = g[r];
        }
        g[i] = r;
        r
    }
    for a in 0..glyphs.len() {
        for b in a + 1..glyphs.len() {
            if same_line(&cands[glyphs[a]], &cands[glyphs[b]]) {
                let (ra, rb) = (find(&mut group, a), find(&mut group, b));
                group[ra] = rb;
            }
        }
    }
    let mut lines: Vec<Vec<usize>> = Vec::new();
    let mut roots: Vec<usize> = Vec::new();
    for (a, &g) in glyphs.iter().enumerate() {
        let r = find(&mut group, a);
        match roots.iter().position(|x| *x == r) {
            Some(k) => lines[k].push(g),
            None => {
                roots.push(r);
                lines.push(vec![g]);
            }
        }
    }
    for mut line in lines {
        line.sort_by_key(|&i| cands[i].bbox[0]);
        let text: String = line.iter().map(|&i| cands[i].glyph.0).collect();
        let bbox = line.iter().fold([u32::MAX, u32::MAX, 0, 0], |b, &i| {
            let c = cands[i].bbox;
            [
                b[0].min(c[0]),
                b[1].min(c[1]),
                b[2].max(c[2]),
                b[3].max(c[3]),
            ]
        });
        let cost = line.iter().map(|&i| cands[i].glyph.1).sum::<f32>() / line.len() as f32;
        let color = cands[line[0]].color;
        out.push(detection(
            ObjectKind::Text { text, color },
            bbox,
            w,
            h,
            cost,
        ));
    }
    for (c, p) in cands.iter().zip(&picks) {
        match p {
            Pick::Shape => out.push(detection(
                ObjectKind::Shape {
                    shape: c.shape.0,
                    color: c.color,
                },
                c.bbox,
                w,
                h,
                c.shape.1,
            )),
            Pick::Icon => out.push(detection(icon_kind(c.icon.0), c.bbox, w, h, c.icon.1)),
            Pick::Glyph | Pick::None => {}
        }
    }
    out
}
