//! Issue 12, the dashboard: `spoolflow serve` as a real process on a free
//! loopback port, asked over raw HTTP/1.1 (see `serve_support`). The
//! root holds completed, failed, aborted, running, queued and rejected
//! tasks and a flow, made by real taskers and the engine. Every page and
//! `/api` route, their status codes, the same JSON as the CLI's `--json`,
//! escaping, bad ids and traversal, a large payload cut, the host check
//! and the access token, the actions and their tokens.

use serde_json::Value;

use super::serve_support::*;
use crate::common::*;

#[test]
fn every_page_answers_and_shows_the_roots_tasks() {
    let (t, _engine) = fixture();
    let srv = serve(&t, &[]);
    for path in [
        "/",
        "/tasks",
        "/tasks?state=failed",
        "/tasks?q=ok&sort=id",
        "/tasks/ok-1",
        "/tasks/flow-1",
        "/tasks/held",
        "/tasks/later-1",
        "/tasks/bad-1",
        "/rejected",
        "/tasks/ok-1/raw",
        "/assets/app.js",
        "/assets/style.css",
    ] {
        let r = get(&srv, path);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(r.header("content-security-policy").is_some(), "{path}");
    }
    // The overview: counts by state, the engine, the latest failures.
    let home = get(&srv, "/").body;
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
    assert!(home.contains("engine running") && home.contains("<svg class=\"chart\""));
    assert!(
        home.contains(r#"href="/tasks/bad-1""#),
        "a latest failure links to its task"
    );

    pages_of_tasks(&srv);

    // Unknown things: 404.
    assert_eq!(get(&srv, "/tasks/no-such-task").status, 404);
    assert_eq!(get(&srv, "/no/such/page").status, 404);
    std::fs::write(t.join("gate"), "").unwrap();
}

/// The tasks page (filters, search, pages), task pages (state, timeline,
/// stderr, a flow's tree) and the rejected files.
fn pages_of_tasks(srv: &Server) {
    let failed_page = get(srv, "/tasks?state=failed").body;
    assert!(
        failed_page.contains(r#"data-id="bad-1""#) && !failed_page.contains(r#"data-id="ok-1""#)
    );
    let search = get(srv, "/tasks?q=ok-").body;
    assert!(search.contains(r#"data-id="ok-1""#) && search.contains(r#"data-id="ok-2""#));
    assert!(!search.contains(r#"data-id="bad-1""#));
    let page = get(srv, "/tasks?limit=2&sort=id").body;
    assert!(page.contains(r#"rel="next""#), "{page}");

    let bad = get(srv, "/tasks/bad-1").body;
    assert!(bad.contains(r#"class="badge failed""#) && bad.contains(r#"id="timeline""#));
    assert!(bad.contains(r#"id="stderr""#) && bad.contains("oops"));
    let held = get(srv, "/tasks/held").body;
    assert!(held.contains(r#"class="badge running""#), "{held}");
    let flow = get(srv, "/tasks/flow-1").body;
    for nid in ["0", "0_0", "0_1"] {
        assert!(
            flow.contains(&format!(r#"data-nid="{nid}""#)),
            "{nid}: {flow}"
        );
    }
    assert!(flow.contains(r#"data-nid="0_1" data-state="completed""#));
    assert_eq!(
        flow.matches(r#"class="row" data-outcome="completed""#)
            .count(),
        2,
        "each task node's attempt is a bar that ended: {flow}"
    );
    let rej = get(srv, "/rejected").body;
    assert!(
        rej.contains("broken.json") && rej.contains("invalid JSON"),
        "{rej}"
    );
    // A rejected file links to its page.
    assert!(rej.contains(r#"href="/tasks/broken""#), "{rej}");
    let page = get(srv, "/tasks/broken");
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"class="badge rejected""#) && page.body.contains("invalid JSON"));
}

#[test]
fn every_api_route_gives_the_clis_json_and_follows_new_records() {
    let (t, _engine) = fixture();
    let srv = serve(&t, &[]);
    let api = |p: &str| {
        let r = get(&srv, p);
        assert_eq!(r.status, 200, "{p}: {}", r.body);
        assert!(
            r.header("content-type").unwrap_or("").contains("json"),
            "{p}"
        );
        r
    };
    let status = api("/api/status").json();
    let cli = cli_json(&t, &["status", "--json"]);
    for k in ["total", "domains", "taskees"] {
        assert_eq!(status[k], cli[k], "{k}");
    }
    assert_eq!(status["engine"]["workers_busy"], 1);
    let tasks = api("/api/tasks?sort=id&limit=1000");
    assert_eq!(
        tasks.json(),
        cli_json(&t, &["list", "--json", "--sort", "id"])
    );
    assert_eq!(tasks.header("x-total-count"), Some("8"));
    let failed = api("/api/tasks?state=failed").json();
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["error"]["kind"], "user");
    let paged = api("/api/tasks?sort=id&limit=2&skip=1").json();
    let ids: Vec<&str> = paged
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["broken.json", "cancelled-1"]);
    for id in ["ok-1", "bad-1", "held", "later-1", "broken"] {
        assert_eq!(
            api(&format!("/api/tasks/{id}")).json(),
            cli_json(&t, &["show", id, "--json"]),
            "{id}"
        );
    }
    assert_eq!(
        api("/api/tasks/flow-1/flow").json(),
        cli_json(&t, &["flow", "flow-1", "--json"])
    );
    let logs = api("/api/tasks/bad-1/logs").body;
    assert!(
        logs.lines().any(|l| l.contains(r#""point":"failed""#)),
        "{logs}"
    );
    assert!(logs.lines().any(|l| l.contains(r#""stderr""#)), "{logs}");
    let rejected = api("/api/rejected").json();
    assert_eq!(rejected[0]["id"], "broken.json");
    assert!(rejected[0]["reason"].as_str().is_some());
    let overview = api("/api/overview").json();
    let minutes = overview["last_hour"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let sum = |k: &str| minutes.iter().map(|m| m[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("completed"), sum("failed")), (3, 2), "the last hour");
    assert_eq!(overview["latest_failures"].as_array().unwrap().len(), 2);

    assert_eq!(get(&srv, "/api/tasks/no-such-task").status, 404);
    assert_eq!(get(&srv, "/api/no-such-route").status, 404);
    assert_eq!(
        get(&srv, "/api/tasks/ok-1/flow").status,
        400,
        "a task, not a flow"
    );
    assert_eq!(
        request(&srv.addr, "DELETE", "/api/tasks/ok-1", &[], "").status,
        403
    );

    // New records show: the summaries the server keeps follow done/.
    std::fs::write(t.join("gate"), "").unwrap();
    wait_for("held and later-1 to complete", DEADLINE, || {
        t.record("held").is_some() && t.record("later-1").is_some()
    });
    wait_for("the status to count them", DEADLINE, || {
        get(&srv, "/api/status").json()["total"]["completed"] == 5
    });
    let tasks = get(&srv, "/api/tasks?state=completed&sort=id").json();
    assert_eq!(tasks.as_array().unwrap().len(), 5);
}

#[test]
fn payloads_and_reasons_holding_script_show_as_text() {
    let (t, _engine) = fixture();
    let srv = serve(&t, &[]);
    for path in ["/tasks/ok-1", "/tasks/bad-1", "/", "/tasks?state=failed"] {
        let body = get(&srv, path).body;
        assert!(
            !body.contains("<script>alert"),
            "{path} holds a live script: {body}"
        );
        assert!(
            body.contains("&lt;script&gt;alert"),
            "{path} shows the text: {body}"
        );
    }
    // A search echoes its text escaped.
    let body = get(&srv, "/tasks?q=%3Cscript%3Ealert(3)%3C/script%3E").body;
    assert!(!body.contains("<script>alert(3)") && body.contains("&lt;script&gt;alert(3)"));
    std::fs::write(t.join("gate"), "").unwrap();
}

#[test]
fn bad_ids_and_traversal_are_refused_and_nothing_outside_the_root_is_read() {
    let t = TestRoot::new();
    // A file beside the root that a traversal would reach.
    let outside = t.path().parent().unwrap().join(format!(
        "{}-secret.json",
        t.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&outside, r#"{"secret":"s3cr3t-outside"}"#).unwrap();
    let srv = serve(&t, &[]);
    let name = outside.file_stem().unwrap().to_string_lossy().to_string();
    let long = "a".repeat(10 * 1024);
    let cases = [
        "/tasks/..".to_string(),
        "/tasks/%2e%2e".to_string(),
        "/tasks/%2E%2E%2Fetc%2Fpasswd".to_string(),
        format!("/tasks/..%2f..%2f{name}"),
        format!("/tasks/..%2f..%2f{name}/raw"),
        format!("/api/tasks/..%2f..%2f{name}"),
        "/tasks/../../etc/passwd".to_string(),
        "/api/tasks/a%00b".to_string(),
        "/tasks/a%00b/raw".to_string(),
        format!("/tasks/{long}"),
        format!("/api/tasks/{long}/flow"),
        "/api/tasks/.hidden/logs".to_string(),
        "/tasks/%2fetc%2fpasswd".to_string(),
    ];
    for path in &cases {
        let r = get(&srv, path);
        assert!(
            r.status == 400 || r.status == 404,
            "{}: {} {}",
            &path[..path.len().min(60)],
            r.status,
            &r.body[..r.body.len().min(300)]
        );
        assert!(!r.body.contains("s3cr3t-outside") && !r.body.contains("root:x:0"));
        assert!(r.body.len() < 4096, "a refusal is short");
    }
    std::fs::remove_file(&outside).unwrap();
}

#[test]
fn a_large_payload_is_shown_cut_with_a_link_to_the_raw_file() {
    let t = TestRoot::new();
    let big = "x".repeat(16 * 1024 * 1024 - 100);
    t.drop_task(
        "big-1.json",
        &format!(r#"{{"domain":"org.example","payload":{{"blob":"{big}"}}}}"#),
    );
    let srv = serve(&t, &[]);
    let page = get(&srv, "/tasks/big-1");
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() < 256 * 1024,
        "the page is bounded: {} bytes",
        page.body.len()
    );
    assert!(page.body.contains(r#"id="payload-cut""#));
    assert!(page.body.contains(r#"href="/tasks/big-1/raw""#));
    let raw = get(&srv, "/tasks/big-1/raw");
    assert_eq!(raw.status, 200);
    assert!(raw.body.len() > 16 * 1024 * 1024 - 100);
    assert!(raw
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
}

/// `/api/tasks` gives ended tasks' whole records up to 32 MiB a page;
/// past it, their summaries and where to read each record.
#[test]
fn a_page_of_large_records_is_bounded_and_names_where_the_rest_are() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\ncat\n");
    let big = "x".repeat(14 * 1024 * 1024);
    for i in 0..3 {
        t.drop_task(
            &format!("big-{i}.json"),
            &format!(r#"{{"domain":"org","tasker":"cat","payload":{{"blob":"{big}"}}}}"#),
        );
    }
    t.run_drain(1);
    let srv = serve(&t, &[]);
    let r = get(&srv, "/api/tasks");
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 34 * 1024 * 1024, "{} bytes", r.body.len());
    let page = r.json();
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 3);
    let whole: Vec<&Value> = page.iter().filter(|e| e.get("payload").is_some()).collect();
    let named: Vec<&Value> = page.iter().filter(|e| e.get("record").is_some()).collect();
    assert_eq!((whole.len(), named.len()), (2, 1), "{}", r.body.len());
    for e in whole {
        assert_eq!(e["payload"]["blob"].as_str().map(str::len), Some(big.len()));
    }
    let id = named[0]["id"].as_str().unwrap();
    assert_eq!(named[0]["state"], "completed");
    assert_eq!(named[0]["record"], format!("/api/tasks/{id}"));
    let one = get(&srv, &format!("/api/tasks/{id}"));
    assert_eq!(one.status, 200);
    assert_eq!(
        one.json()["record"]["payload"]["blob"]
            .as_str()
            .map(str::len),
        Some(big.len()),
        "{}",
        &one.body[..200.min(one.body.len())]
    );
}

/// A running task whose tasker's own points fill the last 4 MiB of its
/// log (what a task's page reads) is shown running, with its attempt, as
/// `list` and `show` show it.
#[test]
fn a_running_task_whose_points_fill_the_pages_tail_is_shown_running() {
    let t = TestRoot::new();
    // 9 000 points of about 700 bytes (6 MiB), then it waits.
    t.tasker("org", "chatty", &chatty_script(9000, 680, &wait_file("go")));
    t.drop_task(
        "busy.json",
        r#"{"id":"busy","domain":"org","tasker":"chatty"}"#,
    );
    let engine = t.spawn_engine(&["--workers", "1"]);
    wait_for("the tasker's points copied", DEADLINE, || {
        std::fs::read_to_string(t.join("var/log/tsk/busy.log"))
            .is_ok_and(|l| l.contains(r#""i":8999"#))
    });
    let srv = serve(&t, &["--allow-actions"]);
    let api = get(&srv, "/api/tasks/busy");
    // The points shown stay those of the last 4 MiB (and the engine's
    // further back): not the whole 6 MiB log.
    assert!(api.body.len() < 5 << 20, "{} bytes", api.body.len());
    let api = api.json();
    assert_eq!(api["state"], "running", "{}", api["state"]);
    let page = get(&srv, "/tasks/busy").body;
    assert!(page.contains(r#"class="badge running""#));
    assert!(!page.contains("no attempt started yet"));
    assert!(
        !page.contains("/tasks/busy/priority"),
        "no priority form for a running task"
    );
    std::fs::write(t.join("go"), "").unwrap();
    wait_for("the record", DEADLINE, || t.record("busy").is_some());
    drop(engine);
}

/// A record whose file changed in place keeps its name and inode (what a
/// record removed by `gc` and the same id's new record that got the freed
/// number look like to a listing): the dashboard reads it again, told by
/// the change, not by the inode.
#[test]
fn a_record_changed_under_the_same_inode_is_read_again() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\ncat\n");
    t.drop_task("r1.json", r#"{"domain":"org","tasker":"cat"}"#);
    t.run_drain(1);
    let srv = serve(&t, &[]);
    // The state as the summaries tell it (a filter, the counts), not as
    // the record read for the answer tells it.
    let state = || {
        ["completed", "aborted"]
            .into_iter()
            .find(|s| {
                get(&srv, &format!("/api/tasks?state={s}"))
                    .json()
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
            })
            .unwrap_or_default()
    };
    assert_eq!(state(), "completed");
    let path = t.join("var/spool/done/r1.json");
    let mut rec = t.must_record("r1");
    rec["state"] = "aborted".into();
    rec["error"] = serde_json::json!({"kind": "aborted", "message": "again"});
    // Written in place: the same inode.
    std::fs::write(&path, rec.to_string()).unwrap();
    wait_for("the new state", DEADLINE, || state() == "aborted");
}

/// `?done=` shows only the notice of one of the dashboard's own actions:
/// a link cannot put its own text on a task's page.
#[test]
fn a_links_done_text_is_not_shown_on_a_task_page() {
    let t = TestRoot::new();
    t.tasker("org", "cat", "#!/bin/sh\ncat\n");
    t.drop_task("t1.json", r#"{"domain":"org","tasker":"cat"}"#);
    t.run_drain(1);
    let srv = serve(&t, &[]);
    let page = get(
        &srv,
        "/tasks/t1?done=Dashboard%20moved%2C%20log%20in%20at%20evil.example%3B",
    )
    .body;
    assert!(!page.contains("evil.example"));
    let page = get(&srv, "/tasks/t1?done=cancel").body;
    assert!(page.contains("Cancel requested."));
}

#[test]
fn a_loopback_server_answers_its_own_host_only_and_off_loopback_needs_a_token() {
    let t = TestRoot::new();
    let out = t
        .cmd()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("SPOOLFLOW_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let srv = serve(&t, &[]);
    let r = request(&srv.addr, "GET", "/", &[("Host", "rebound.example:80")], "");
    assert_eq!(r.status, 403, "DNS rebinding: another site's name");
    assert_eq!(get(&srv, "/").status, 200);

    // With --token, every request carries it.
    let token = "a-token-of-twenty-chars";
    let srv = serve(&t, &["--token", token]);
    for path in ["/", "/api/status", "/events", "/tasks/x"] {
        assert_eq!(get(&srv, path).status, 401, "{path}");
    }
    let bearer = format!("Bearer {token}");
    assert_eq!(
        request(
            &srv.addr,
            "GET",
            "/api/status",
            &[("Authorization", &bearer)],
            ""
        )
        .status,
        200
    );
    assert_eq!(
        request(
            &srv.addr,
            "GET",
            "/api/status",
            &[("Authorization", "Bearer wrong-token-of-twenty")],
            ""
        )
        .status,
        401
    );
    let r = get(&srv, &format!("/tasks?token={token}&state=failed"));
    assert_eq!(r.status, 303, "the token leaves the address bar");
    assert_eq!(r.header("location"), Some("/tasks?state=failed"));
    let cookie = r
        .header("set-cookie")
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(r.header("set-cookie").unwrap().contains("HttpOnly"));
    assert_eq!(
        request(&srv.addr, "GET", "/tasks", &[("Cookie", &cookie)], "").status,
        200
    );
}

/// A root with `later-1` queued in `in/` and `bad-1` failed; no engine.
fn action_root() -> TestRoot {
    let t = TestRoot::new();
    t.tasker("org.example", "bad", "#!/bin/sh\ncat >/dev/null\nexit 3\n");
    t.taskmaster("org.example", "\"bad\"");
    t.drop_task("bad-1.json", r#"{"domain":"org.example"}"#);
    t.run_drain(1);
    assert!(t.record("bad-1").is_some());
    t.drop_task("later-1.json", r#"{"domain":"org.example"}"#);
    t
}

#[test]
fn actions_need_allow_actions_and_the_token_and_write_the_clis_requests() {
    let t = action_root();
    let cancel_file = t.join("var/spool/cancel/later-1");
    // Read-only: refused, whatever the token.
    let ro = serve(&t, &[]);
    let r = request(
        &ro.addr,
        "POST",
        "/api/tasks/later-1/cancel",
        &[],
        "token=guess",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("--allow-actions"));
    let page = get(&ro, "/tasks/later-1").body;
    assert!(!page.contains("/cancel"), "no action form when read-only");
    assert!(!cancel_file.exists());

    let srv = serve(&t, &["--allow-actions"]);
    let token = srv.action_token.clone().unwrap();
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        request(&srv.addr, "POST", path, headers, body)
    };
    assert_eq!(
        post("/api/tasks/later-1/cancel", &[], "").status,
        403,
        "no token"
    );
    assert_eq!(
        post(
            "/api/tasks/later-1/cancel",
            &[],
            "token=0123456789abcdef0123456789abcdef"
        )
        .status,
        403
    );
    assert_eq!(
        request(&srv.addr, "GET", "/api/tasks/later-1/cancel", &[], "").status,
        405,
        "POST only"
    );
    let other = [
        ("Origin", "http://evil.example"),
        ("X-Action-Token", token.as_str()),
    ];
    assert_eq!(
        post("/api/tasks/later-1/cancel", &other, "").status,
        403,
        "another origin"
    );
    assert!(!cancel_file.exists());
    // The page's form carries the token.
    let page = get(&srv, "/tasks/later-1").body;
    assert!(page.contains(&format!(r#"name="token" value="{token}""#)));

    // Accepted: the same request files as the CLI.
    let r = post(
        "/api/tasks/later-1/priority",
        &[],
        &format!("token={token}&priority=9"),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let p: Value =
        serde_json::from_slice(&std::fs::read(t.join("var/spool/priority/later-1")).unwrap())
            .unwrap();
    assert_eq!(p, serde_json::json!({"id": "later-1", "priority": 9}));
    let r = post(
        "/api/tasks/later-1/cancel",
        &[("X-Action-Token", &token)],
        "reason=from+the+dashboard",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["file"], "var/spool/cancel/later-1");
    let c: Value = serde_json::from_slice(&std::fs::read(&cancel_file).unwrap()).unwrap();
    assert_eq!(c["reason"], "from the dashboard");
    // A form of the page goes back to the page.
    let r = post(
        "/api/tasks/bad-1/retry",
        &[],
        &format!("token={token}&back=1"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/tasks/bad-1?done=retry"));
    assert!(t.join("var/spool/history/bad-1").is_dir() && t.record("bad-1").is_none());
    // Refusals of the CLI's: an ended task, an unknown one, a bad id.
    let r = post(
        "/api/tasks/nobody/cancel",
        &[("X-Action-Token", &token)],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        post(
            "/api/tasks/..%2fx/cancel",
            &[("X-Action-Token", &token)],
            ""
        )
        .status,
        400
    );
    let r = post(
        "/api/tasks/later-1/priority",
        &[("X-Action-Token", &token)],
        "priority=high",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn each_task_page_offers_the_actions_the_engine_takes_for_it() {
    let (t, _engine) = fixture();
    let srv = serve(&t, &["--allow-actions"]);
    let forms = |id: &str| {
        let page = get(&srv, &format!("/tasks/{id}")).body;
        ["cancel", "priority", "retry"]
            .into_iter()
            .filter(|a| page.contains(&format!("/api/tasks/{id}/{a}")))
            .collect::<Vec<_>>()
    };
    // A new priority only while the task waits (the engine refuses one
    // for a running task), cancel until it ends, retry after a failure.
    assert_eq!(forms("later-1"), ["cancel", "priority"]);
    assert_eq!(forms("held"), ["cancel"], "running: no new priority");
    assert_eq!(forms("bad-1"), ["retry"]);
    assert!(forms("ok-1").is_empty());
    assert!(forms("flow-1").is_empty());
}

#[test]
fn a_skip_past_the_end_shows_an_empty_page_whatever_its_size() {
    let t = action_root();
    let srv = serve(&t, &[]);
    for skip in ["5", "18446744073709551615"] {
        let r = get(&srv, &format!("/tasks?skip={skip}"));
        assert_eq!(r.status, 200, "skip={skip}: {}", r.body);
        assert!(r.body.contains("2–2 of 2"), "skip={skip}: {}", r.body);
        assert!(!r.body.contains(r#"rel="next""#), "skip={skip}");
        let api = get(&srv, &format!("/api/tasks?skip={skip}"));
        assert_eq!(api.status, 200, "skip={skip}: {}", api.body);
    }
}

/// A cancel or priority request for a task that has ended is rejected
/// with a reason that says it was a request: `list` and `status` do not
/// count it as a rejected task (its file is named after the completed
/// task), and the dashboard's rejected files include it.
#[test]
fn a_rejected_request_is_not_listed_as_a_rejected_task() {
    let t = TestRoot::new();
    t.tasker("org", "ok", "#!/bin/sh\ncat\n");
    t.drop_task("fin.json", r#"{"id":"fin","domain":"org","tasker":"ok"}"#);
    t.run_drain(1);
    std::fs::write(t.join("var/spool/cancel/fin"), "").unwrap();
    std::fs::write(t.join("var/spool/priority/fin"), "5").unwrap();
    // A request named like a task file, for a task nobody knows.
    std::fs::write(t.join("var/spool/cancel/ghost.json"), "").unwrap();
    t.drop_task("broken.json", "{");
    t.run_drain(1);
    assert!(t.rejected_reason("ghost.json").is_some());
    let (code, out, err) = sf(&t, &["show", "ghost"]);
    assert_eq!(code, 3, "ghost is no task, rejected or not: {out}{err}");
    let reason = |name: &str| {
        t.rejected_reason(name)
            .unwrap_or_else(|| {
                panic!(
                    "{name} rejected; rejected/: {:?}",
                    t.list("var/spool/rejected")
                )
            })
            .trim_end()
            .to_string()
    };
    // The two requests are both named `fin` (one gets a `.1`).
    let mut reasons = [reason("fin"), reason("fin.1")];
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "cancel request: task fin has ended already",
            "priority request: task fin has ended already"
        ]
    );

    let listed = cli_json(&t, &["list", "--json"]);
    let mut states: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().into(),
                s["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        [
            ("broken.json".to_string(), "rejected".to_string()),
            ("fin".to_string(), "completed".to_string())
        ],
        "{listed:#}"
    );
    let status = cli_json(&t, &["status", "--json"]);
    assert_eq!(status["total"]["rejected"], 1, "{status:#}");
    assert_eq!(status["total"]["total"], 2, "{status:#}");

    let srv = serve(&t, &[]);
    let rejected = get(&srv, "/api/rejected").json();
    let mut names: Vec<&str> = rejected
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["broken.json", "fin", "fin.1", "ghost.json"],
        "{rejected:#}"
    );
}
