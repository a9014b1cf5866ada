//! Issue 12, the dashboard in a real browser: headless Chromium (Debian's
//! `chromium`; `.ci/run` installs it) loads the overview, the tasks page
//! and a flow's page from a real `spoolflow serve`, with its script
//! running, and the test reads the DOM it rendered (`--dump-dom`): the
//! counts, a task row, the flow's tree. It also takes a screenshot of the
//! overview and of a task page (into a temporary directory, or into
//! `$SPOOLFLOW_SCREENSHOTS` when set: how docs/ gets its pictures).
//!
//! Without a `chromium` on the PATH the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cdp::{headless, Browser};
use super::serve_support::{fixture, serve};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// Runs headless Chromium with `args` and the URL; its stdout. Killed
/// past the deadline.
fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut child = headless(bin, profile)
        .arg("--hide-scrollbars")
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish with {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap_or_default()
}

#[test]
fn chromium_renders_the_overview_the_tasks_and_a_flows_tree() {
    let Some(bin) = chromium() else {
        eprintln!("NOTICE: no chromium on the PATH: the browser test is skipped (apt-get install chromium)");
        return;
    };
    let (t, _engine) = fixture();
    let srv = serve(&t, &[]);
    let base = format!("http://{}", srv.addr);
    let profile = tempfile::tempdir().unwrap();

    let home = run_chromium(
        &bin,
        profile.path(),
        &["--dump-dom".into()],
        &format!("{base}/"),
    );
    for (state, n) in [
        ("completed", 3),
        ("failed", 1),
        ("aborted", 1),
        ("running", 1),
        ("queued", 1),
        ("rejected", 1),
    ] {
        assert!(
            home.contains(&format!(r#"id="count-{state}" data-count="{n}""#)),
            "{state} {n}: {home}"
        );
    }
    assert!(home.contains("engine running"), "{home}");
    // The script ran: it connects (or connected) to the live stream.
    assert!(
        home.contains("○ connecting") || home.contains("● live"),
        "the script ran: {home}"
    );

    let tasks = run_chromium(
        &bin,
        profile.path(),
        &["--dump-dom".into()],
        &format!("{base}/tasks?sort=id"),
    );
    assert!(
        tasks.contains(r#"<tr class="task" data-id="bad-1" data-state="failed">"#),
        "{tasks}"
    );
    assert!(tasks.contains(r#"href="/tasks/ok-1""#));

    let flow = run_chromium(
        &bin,
        profile.path(),
        &["--dump-dom".into()],
        &format!("{base}/tasks/flow-1"),
    );
    for nid in ["0_0", "0_1"] {
        assert!(
            flow.contains(&format!(r#"data-nid="{nid}" data-state="completed""#)),
            "{nid}: {flow}"
        );
    }
    assert!(flow.contains(r#"id="flow-tree""#) && flow.contains(r#"id="timeline""#));

    // Screenshots of the overview and of a task page.
    let dir = std::env::var_os("SPOOLFLOW_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().to_path_buf());
    for (name, path) in [
        ("dashboard-overview.png", "/"),
        ("dashboard-task.png", "/tasks/flow-1"),
    ] {
        let file = dir.join(name);
        let _ = std::fs::remove_file(&file);
        run_chromium(
            &bin,
            profile.path(),
            &[
                format!("--screenshot={}", file.display()),
                "--window-size=1200,800".into(),
            ],
            &format!("{base}{path}"),
        );
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("no screenshot {name}: {e}"));
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: {} bytes",
            png.len()
        );
    }
    std::fs::write(t.join("gate"), "").unwrap();
}

#[test]
fn what_a_user_types_into_a_form_survives_the_live_refresh() {
    let Some(bin) = chromium() else {
        eprintln!("NOTICE: no chromium on the PATH: the browser test is skipped (apt-get install chromium)");
        return;
    };
    let (t, _engine) = fixture();
    let srv = serve(&t, &["--allow-actions"]);
    // A waiting task: its page offers a reason to cancel and a priority.
    let mut b = Browser::open(&bin, &format!("http://{}/tasks/later-1", srv.addr));

    b.wait_until(
        "the live stream connected",
        r#"document.getElementById("live-state") !== null && document.getElementById("live-state").textContent === "● live""#,
        Duration::from_secs(60),
    );
    let reason = r#"document.querySelector('form[action$="/cancel"] input[name=reason]')"#;
    let priority = r#"document.querySelector('form[action$="/priority"] input[name=priority]')"#;
    b.eval(&format!("{reason}.focus()"));
    b.type_text("asked by ops");
    // Half a number: the field's value is "" until a digit follows.
    b.eval(&format!("{priority}.focus()"));
    b.type_text("-");
    refreshed(&t, &mut b, "poke-1");
    let after = b.eval(&format!(
        "JSON.stringify([{reason}.value, document.activeElement.name || ''])"
    ));
    let after: Vec<String> = serde_json::from_str(after.as_str().unwrap()).unwrap();
    assert_eq!(
        after,
        ["asked by ops", "priority"],
        "typed values and focus kept"
    );
    // Typing goes on where it was.
    b.type_text("9");
    assert_eq!(b.eval(&format!("{priority}.value")), "-9");
    // The caret stays where the user put it.
    b.eval(&format!(
        "{reason}.focus(); {reason}.setSelectionRange(5, 5)"
    ));
    refreshed(&t, &mut b, "poke-2");
    b.type_text(",");
    assert_eq!(b.eval(&format!("{reason}.value")), "asked, by ops");
    assert_eq!(b.eval(&format!("{priority}.value")), "-9");
    std::fs::write(t.join("gate"), "").unwrap();
}

/// Makes a change in the root (a task dropped) and waits until the page
/// has replaced its live part (marked before the change).
fn refreshed(t: &crate::common::TestRoot, b: &mut Browser, id: &str) {
    b.eval(r#"document.getElementById("live").dataset.before = "1""#);
    t.drop_task(
        &format!("{id}.json"),
        r#"{"domain":"org.example","payload":{"who":"ok"}}"#,
    );
    b.wait_until(
        "the page refreshed",
        r#"document.getElementById("live") !== null && !document.getElementById("live").dataset.before"#,
        Duration::from_secs(60),
    );
}
