//! The `sprout` binary end to end: outputs, the last-line JSON, and clear errors on bad input.

use std::process::Output;

mod common;
use common::{sprout, stderr};

fn last_json(o: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

#[test]
fn world_render_writes_images_scenes_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let o = sprout(&[
        "world", "render", "--count", "6", "--seed", "3", "--aspect", "any", "--out", out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("scenes/s"));
    for i in 0..6 {
        let img = image::open(dir.path().join(format!("{i:06}.png"))).unwrap();
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{i:06}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["scene"]["width"], img.width());
        assert_eq!(meta["scene"]["height"], img.height());
        for level in ["short", "medium", "long"] {
            assert!(!meta["captions"][level].as_str().unwrap().is_empty());
        }
        // The scene file re-renders to the same pixels.
        let scene_path = dir.path().join(format!("s{i}.json"));
        std::fs::write(&scene_path, meta["scene"].to_string()).unwrap();
        let redraw = dir.path().join(format!("r{i}.png"));
        let o = sprout(&[
            "world",
            "draw",
            scene_path.to_str().unwrap(),
            "-o",
            redraw.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(image::open(&redraw).unwrap().to_rgb8(), img.to_rgb8());
    }
}

#[test]
fn self_check_prints_a_json_last_line_and_saves_images() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("gt");
    let o = sprout(&[
        "eval",
        "--self-check",
        "--count",
        "18",
        "--save",
        save.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert!(j["overall"].as_f64().unwrap() >= 0.99, "{j}");
    for cat in [
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
        "text",
        "icon",
        "aspect",
    ] {
        assert!(j[cat].is_number(), "{cat} missing in {j}");
    }
    assert_eq!(j["images"], 18);
    assert!(save.join("worldeval.json").is_file() && save.join("worldeval.md").is_file());
    // The saved images are what `--images` scores, with the same result.
    let o = sprout(&["eval", "--images", save.to_str().unwrap(), "--count", "18"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_json(&o)["overall"], j["overall"]);
    // With the full set, the other prompts are missing: a non-zero exit naming the gap, and
    // the partial report is still written and printed.
    let o = sprout(&["eval", "--images", save.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("have no image"), "{}", stderr(&o));
    assert_eq!(last_json(&o)["images"], 18);
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["eval", "--self-check", "--count", "0"],
            "--count 0 is out of range",
        ),
        (
            vec!["eval", "--self-check", "--count", "100000"],
            "out of range",
        ),
        (
            vec!["eval", "--self-check", "--category", "colour"],
            "unknown category \"colour\"",
        ),
        (vec!["eval", "--images", "/no/such/dir"], "not a directory"),
        (
            vec!["eval", "--self-check", "--prompt", "colors_999"],
            "unknown prompt id \"colors_999\"",
        ),
        (
            vec!["world", "render", "--count", "0", "--out", d],
            "--count 0 is out of range",
        ),
        (
            vec![
                "world", "render", "--count", "2", "--size", "7x7", "--out", d,
            ],
            "between 32 and 4096",
        ),
        (
            vec![
                "world", "render", "--count", "2", "--aspect", "5:4", "--out", d,
            ],
            "unknown aspect ratio",
        ),
    ];
    // Training configs: a key that does not exist and a time limit that is no duration are
    // named before anything runs.
    let cfg = |extra: &str| {
        let path = dir.path().join(format!("cfg{}.toml", extra.len()));
        std::fs::write(
            &path,
            format!(
                "kind = \"dit\"\nout = \"{d}/run\"\n{extra}\n[dit]\nae = \"{d}/ae\"\n[[stage]]\nsteps = 2\nside = 64\nbatch = 2\n"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let (typo, limit) = (cfg("semantik = true"), cfg("time_limit = \"two hours\""));
    let cases: Vec<(Vec<&str>, &str)> = cases
        .into_iter()
        .chain([
            (
                vec!["train", "--config", typo.as_str()],
                "unknown field `semantik`",
            ),
            (
                vec!["train", "--config", limit.as_str()],
                "time_limit \"two hours\"",
            ),
        ])
        .collect();
    for (args, want) in cases {
        let o = sprout(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?} panicked");
    }
    // Malformed scene files: an invalid field is named, and broken JSON is called that.
    let bad = dir.path().join("bad.json");
    let out = dir.path().join("x.png");
    let invalid_text = r#"{"width": 256, "height": 256, "background": {"type": "solid", "color": "white"},
        "objects": [{"type": "text", "text": "hi!", "color": "red", "size": "small", "center": [0.5, 0.5]}]}"#;
    for (content, want) in [
        (invalid_text, "objects[0].text"),
        ("{not json", "malformed scene JSON"),
    ] {
        std::fs::write(&bad, content).unwrap();
        let o = sprout(&[
            "world",
            "draw",
            bad.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(!out.exists());
    }
}

/// Output piped into a reader that stops early (`sprout eval --list | head -1`) ends the
/// command as command-line tools end, by SIGPIPE, with no panic message. The pipe is made
/// one page small, so that the listing (about 54 kB) cannot all fit before the reader goes.
#[cfg(target_os = "linux")]
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe; each end is owned once below.
    let (mut reader, writer) = unsafe {
        // Close-on-exec: the child must not inherit the read end, or the pipe never loses
        // its last reader.
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert!(libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 4096) > 0);
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sprout"));
    cmd.args(["eval", "--list"])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let mut first = [0u8; 16];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(&first[..2], b"{\"");
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
