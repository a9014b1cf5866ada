//! SPEC 14: taskers run as jobs of a real Slurm cluster (the development
//! cluster of `scripts/slurm-dev`): the reply table, capacity, timeouts,
//! cancels, refusals, flows, what operators see (crashes, outages and
//! lost nodes are in `slurm_recovery`). Each test skips, loudly, when no
//! cluster answers (and fails in CI, see `common::slurm`). The engine is
//! the built binary, the taskers small `sh` scripts run by `slurmd`.

use std::time::{Duration, Instant};

use crate::common::slurm::SlurmCluster;
use crate::common::*;

/// A tasker directory run on Slurm, with `extra` keys in its `tasker.json`.
pub(crate) fn slurm_tasker(t: &TestRoot, name: &str, extra: &str, script: &str) {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    t.tasker_dir(
        "org.example",
        name,
        &format!(r#"{{"cmd":["./run"],"executor":"slurm"{extra}}}"#),
        &[("run", script)],
    );
}

/// `spoolflow run` against the cluster (a fast poll), with a secret in its
/// environment that no tasker may see.
pub(crate) fn engine(t: &TestRoot, c: &SlurmCluster, args: &[&str]) -> EngineProcess {
    EngineProcess::spawn(&mut engine_command(t, c, args))
}

/// The command of [`engine`], to set more on.
pub(crate) fn engine_command(
    t: &TestRoot,
    c: &SlurmCluster,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = t.run_command(&["--workers", "2", "--slurm-poll", "0.2s"]);
    cmd.args(args).envs(c.env()).env("ENGINE_SECRET", "hunter2");
    cmd
}

pub(crate) fn task(t: &TestRoot, id: &str, tasker: &str, payload: &str) {
    t.drop_task(
        &format!("{id}.json"),
        &format!(r#"{{"domain":"org.example","tasker":"{tasker}","payload":{payload}}}"#),
    );
}

/// `spoolflow cancel ID`, which must succeed.
pub(crate) fn cancel_task(t: &TestRoot, id: &str) {
    let out = t.cmd().args(["cancel", id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn wait_records(t: &TestRoot, ids: &[String], deadline: Duration) {
    wait_for("every record", deadline, || {
        ids.iter().all(|id| t.record(id).is_some())
    });
}

/// The engine's jobs (named `spoolflow.<exid>.…`) of this root's tasks.
pub(crate) fn jobs_of(c: &SlurmCluster, prefix: &str) -> Vec<(u64, String)> {
    c.squeue_jobs(&format!("spoolflow.{prefix}"))
}

#[test]
fn the_reply_table_points_and_environment_hold_on_slurm() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    slurm_tasker(
        &t,
        "ok",
        "",
        "#!/bin/sh\nenv > \"$SPOOLFLOW_ROOT/env-$SPOOLFLOW_ID\"\n\
         echo '{\"point\":\"progress\",\"done\":1}' >> \"$SPOOLFLOW_POINTS\"\n\
         cat >/dev/null\necho '{\"book\":\"done\"}'\n",
    );
    slurm_tasker(
        &t,
        "fails",
        "",
        "#!/bin/sh\ncat >/dev/null\necho '{\"point\":\"failed\",\"reason\":\"no ink\"}'\n",
    );
    slurm_tasker(
        &t,
        "exits",
        "",
        "#!/bin/sh\ncat >/dev/null\necho 'the press jammed' >&2\nexit 3\n",
    );
    slurm_tasker(
        &t,
        "garbles",
        "",
        "#!/bin/sh\ncat >/dev/null\necho 'not json'\n",
    );
    task(&t, "s-ok", "ok", r#"{"book":"moby"}"#);
    task(&t, "s-fails", "fails", "{}");
    task(&t, "s-exits", "exits", "{}");
    task(&t, "s-garbles", "garbles", "{}");
    let e = engine(&t, &c, &["--drain"]);
    let (code, err) = e.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");

    let ok = t.must_record("s-ok");
    assert_eq!(ok["state"], "completed", "{ok:#}");
    assert_eq!(ok["payload"]["book"], "done");
    let attempt = &ok["attempts_log"][0];
    assert!(attempt["job_id"].as_u64().is_some(), "{ok:#}");
    assert!(
        attempt["node"].as_str().is_some_and(|n| !n.is_empty()),
        "{ok:#}"
    );
    let names = t.point_names("s-ok");
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert!(
        pos("allocated") < pos("submitted") && pos("submitted") < pos("started"),
        "{names:?}"
    );
    let submitted = &t.points_named("s-ok", "submitted")[0];
    let started = &t.points_named("s-ok", "started")[0];
    assert_eq!(submitted["job_id"], started["job_id"]);
    assert!(started["node"].as_str().is_some_and(|n| !n.is_empty()));
    let progress = t.points_named("s-ok", "progress");
    assert_eq!(progress.len(), 1, "the job's own point is copied once");
    assert_eq!(progress[0]["done"], 1);

    let env = std::fs::read_to_string(t.join("env-s-ok")).expect("the tasker wrote its env");
    assert!(env.contains("SPOOLFLOW_ID=s-ok"), "{env}");
    assert!(env.contains("SPOOLFLOW_EXID=s-ok"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("SLURM_JOB_ID=")), "{env}");
    assert!(
        !env.contains("hunter2"),
        "the engine's secret leaked: {env}"
    );

    let r = t.must_record("s-fails");
    assert_eq!(r["state"], "failed");
    assert_eq!(r["error"]["kind"], "user");
    assert_eq!(r["reason"], "no ink");
    let r = t.must_record("s-exits");
    assert_eq!(r["error"]["kind"], "user");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains("exit status 3") && reason.contains("the press jammed"),
        "{reason}"
    );
    let err_log = std::fs::read_to_string(t.join("var/log/tsk/s-exits.err")).unwrap();
    assert!(err_log.contains("the press jammed"), "{err_log}");
    let r = t.must_record("s-garbles");
    assert_eq!(r["error"]["kind"], "user");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("reply is not JSON"),
        "{r:#}"
    );

    // The jobs' directories go with `gc`, once their tasks have ended.
    assert!(t.join("var/slurm/s-ok.0.1.1/status").exists());
    let out = t.cmd().args(["gc", "--older-than", "0s"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("var/slurm/s-ok.0.1.1/"), "{said}");
    assert_eq!(t.list("var/slurm"), Vec::<String>::new());
}

#[test]
fn slurm_jobs_bounds_the_jobs_on_the_cluster() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    slurm_tasker(&t, "nap", "", "#!/bin/sh\ncat >/dev/null\nsleep 0.3\n");
    let prefix = format!("cap{}", std::process::id());
    let ids: Vec<String> = (0..60).map(|i| format!("{prefix}-{i:02}")).collect();
    for id in &ids {
        task(&t, id, "nap", "{}");
    }
    let mut e = engine(&t, &c, &["--drain", "--slurm-jobs", "5"]);
    let mut most = 0;
    let mut samples = 0;
    let end = Instant::now() + Duration::from_secs(300);
    while !e.exited() {
        assert!(Instant::now() < end, "60 tasks did not end within 300 s");
        let live = jobs_of(&c, &prefix)
            .into_iter()
            .filter(|(_, state)| matches!(state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING"))
            .count();
        most = most.max(live);
        samples += 1;
    }
    assert!(samples > 10, "sampled squeue {samples} times");
    assert!(most <= 5, "{most} jobs pending or running at once");
    assert!(most >= 2, "the jobs ran side by side ({most} at most)");
    for id in &ids {
        assert_eq!(t.must_record(id)["state"], "completed", "{id}");
    }
}

/// Waits for a task's `started` point; returns its job id.
pub(crate) fn started_job(t: &TestRoot, id: &str) -> u64 {
    wait_for(&format!("{id} started"), Duration::from_secs(60), || {
        !t.points_named(id, "started").is_empty()
    });
    t.points_named(id, "started")[0]["job_id"]
        .as_u64()
        .expect("a job id")
}

pub(crate) fn job_gone(c: &SlurmCluster, prefix: &str, job: u64) -> bool {
    jobs_of(c, prefix).iter().all(|(id, state)| {
        *id != job
            || !matches!(
                state.as_str(),
                "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING"
            )
    })
}

/// Whether a process whose command line holds `marker` runs.
pub(crate) fn marker_runs(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
}

#[test]
fn timeouts_and_cancels_end_the_jobs() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    let prefix = format!("tc{}", std::process::id());
    let m_timeout = format!("{prefix}timeoutmarker");
    let m_cancel = format!("{prefix}cancelmarker");
    slurm_tasker(
        &t,
        "slow",
        r#""timeout":"3s""#,
        &format!("#!/bin/sh\ncat >/dev/null\nexec sleep 300 {m_timeout}\n").replace(
            &format!("sleep 300 {m_timeout}"),
            &format!("sh -c 'sleep 300' {m_timeout}"),
        ),
    );
    slurm_tasker(
        &t,
        "long",
        "",
        &format!("#!/bin/sh\ncat >/dev/null\nexec sh -c 'sleep 300' {m_cancel}\n"),
    );
    slurm_tasker(
        &t,
        "held",
        r#""slurm":{"args":["--hold"]}"#,
        "#!/bin/sh\ncat >/dev/null\n",
    );
    let timed = format!("{prefix}-timeout");
    let running = format!("{prefix}-running");
    let pending = format!("{prefix}-pending");
    task(&t, &timed, "slow", "{}");
    task(&t, &running, "long", "{}");
    task(&t, &pending, "held", "{}");
    let e = engine(&t, &c, &[]);
    let job_t = started_job(&t, &timed);
    let job_r = started_job(&t, &running);
    wait_for("the held job submitted", Duration::from_secs(60), || {
        !t.points_named(&pending, "submitted").is_empty()
    });
    let job_p = t.points_named(&pending, "submitted")[0]["job_id"]
        .as_u64()
        .unwrap();
    operators_see_the_jobs(&t, &running, job_r, &pending, job_p);
    for id in [&running, &pending] {
        cancel_task(&t, id);
    }
    wait_records(
        &t,
        &[timed.clone(), running.clone(), pending.clone()],
        Duration::from_secs(90),
    );
    let r = t.must_record(&timed);
    assert_eq!(r["state"], "failed", "{r:#}");
    assert_eq!(r["error"]["kind"], "timeout", "{r:#}");
    assert_eq!(t.must_record(&running)["state"], "aborted");
    assert_eq!(t.must_record(&pending)["state"], "aborted");
    assert!(
        t.points_named(&pending, "started").is_empty(),
        "a pending job never started"
    );
    for job in [job_t, job_r, job_p] {
        wait_for(&format!("job {job} gone"), Duration::from_secs(30), || {
            job_gone(&c, &prefix, job)
        });
    }
    wait_for(
        "the taskers' processes gone",
        Duration::from_secs(30),
        || !marker_runs(&m_timeout) && !marker_runs(&m_cancel),
    );
    drop(e);
}

#[test]
fn sbatch_refusals_fail_the_task_config_with_slurms_words() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    slurm_tasker(
        &t,
        "lost",
        r#""slurm":{"partition":"nosuchpartition"}"#,
        "#!/bin/sh\ncat >/dev/null\n",
    );
    task(&t, "s-part", "lost", "{}");
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let r = t.must_record("s-part");
    assert_eq!(r["state"], "failed");
    assert_eq!(r["error"]["kind"], "config", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("sbatch refused the job: "), "{reason}");
    assert!(reason.to_lowercase().contains("partition"), "{reason}");
}

/// `show`, `list` and `status` name each running node's job, its Slurm
/// state and its node.
fn operators_see_the_jobs(t: &TestRoot, running: &str, job_r: u64, pending: &str, job_p: u64) {
    let text = |args: &[&str]| {
        let out = t.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let show = text(&["show", running]);
    assert!(show.contains(&format!("job {job_r} RUNNING on ")), "{show}");
    let show = text(&["show", pending]);
    assert!(show.contains(&format!("job {job_p} PENDING")), "{show}");
    let list = text(&["list"]);
    assert!(
        list.contains(&format!("(job {job_r} RUNNING on ")),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&text(&["show", running, "--json"])).unwrap();
    assert_eq!(json["slurm"][0]["job_id"], job_r, "{json:#}");
    assert_eq!(json["slurm"][0]["state"], "RUNNING");
    let status = text(&["status"]);
    assert!(status.contains("slurm: 1 pending, "), "{status}");
    // The dashboard's task page and its API say the same.
    let srv = crate::serve_support::serve(t, &[]);
    let page = crate::serve_support::get(&srv, &format!("/tasks/{running}"));
    assert!(
        page.body.contains(&format!("job {job_r} RUNNING on ")),
        "{}",
        page.body
    );
    let api = crate::serve_support::get(&srv, &format!("/api/tasks/{pending}")).json();
    assert_eq!(api["slurm"][0]["state"], "PENDING", "{api:#}");
}

#[test]
fn a_concurrence_runs_local_and_slurm_nodes_side_by_side() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    t.tasker(
        "org.example",
        "here",
        "#!/bin/sh\ncat >/dev/null\necho '{\"here\":true}'\n",
    );
    slurm_tasker(&t, "there", "", "#!/bin/sh\ncat >/dev/null\necho \"{\\\"there_$SPOOLFLOW_NID\\\":\\\"$SLURM_JOB_ID\\\"}\"\n");
    slurm_tasker(&t, "broken", "", "#!/bin/sh\ncat >/dev/null\nexit 2\n");
    slurm_tasker(
        &t,
        "sleepy",
        "",
        "#!/bin/sh\ncat >/dev/null\nexec sh -c 'sleep 300' sleepymarker$PPID\n",
    );
    let flow = |id: &str, a: &str, b: &str, c2: &str| {
        t.drop_task(
            &format!("{id}.json"),
            &format!(
                r#"{{"domain":"org.example","payload":{{}},"flow":{{"concurrence":[{{"task":"{a}"}},{{"task":"{b}"}},{{"task":"{c2}"}}]}}}}"#
            ),
        );
    };
    flow("f-ok", "here", "there", "there");
    flow("f-bad", "here", "broken", "sleepy");
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let ok = t.must_record("f-ok");
    assert_eq!(ok["state"], "completed", "{ok:#}");
    assert_eq!(ok["payload"]["here"], true);
    let merged: Vec<&String> = ok["payload"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("there_"))
        .collect();
    assert_eq!(merged.len(), 2, "both Slurm nodes merged: {ok:#}");
    let bad = t.must_record("f-bad");
    assert_eq!(bad["state"], "failed", "{bad:#}");
    let sleepy_jobs: Vec<u64> = t
        .points_named("f-bad", "submitted")
        .iter()
        .filter_map(|p| p["job_id"].as_u64())
        .collect();
    assert!(!sleepy_jobs.is_empty());
    for job in sleepy_jobs {
        wait_for(&format!("job {job} gone"), Duration::from_secs(30), || {
            job_gone(&c, "f-bad", job)
        });
    }
}

#[test]
fn check_validates_the_slurm_keys_and_looks_for_sbatch() {
    // No cluster needed: `check` reads files and the PATH only.
    let t = TestRoot::new();
    slurm_tasker(
        &t,
        "typo",
        r#""slurm":{"partiton":"batch"}"#,
        "#!/bin/sh\ncat\n",
    );
    let out = t.cmd().arg("check").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("unknown field `partiton`"), "{text}");

    let t = TestRoot::new();
    slurm_tasker(
        &t,
        "fine",
        r#""slurm":{"partition":"batch","time":"1h"}"#,
        "#!/bin/sh\ncat\n",
    );
    let out = t
        .cmd()
        .arg("check")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    // On a local filesystem (this machine's /tmp), the root is said not to
    // be shared.
    let fs = nix::sys::statfs::statfs(t.path())
        .unwrap()
        .filesystem_type();
    let local = [
        nix::sys::statfs::EXT4_SUPER_MAGIC,
        nix::sys::statfs::TMPFS_MAGIC,
        nix::sys::statfs::XFS_SUPER_MAGIC,
        nix::sys::statfs::OVERLAYFS_SUPER_MAGIC,
        nix::sys::statfs::BTRFS_SUPER_MAGIC,
    ];
    assert_eq!(
        text.contains("the cluster's nodes must see it at the same path"),
        local.contains(&fs),
        "{text}"
    );
    assert!(
        text.contains("needs sbatch, which is not on the engine's PATH"),
        "{text}"
    );

    // A bad key fails the task `config` as well, with the same words.
    let t = TestRoot::new();
    slurm_tasker(&t, "typo", r#""slurm":{"cpus":"four"}"#, "#!/bin/sh\ncat\n");
    task(&t, "s-typo", "typo", "{}");
    t.run_drain(1);
    let r = t.must_record("s-typo");
    assert_eq!(r["error"]["kind"], "config", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap().contains("cpus")
            || r["reason"].as_str().unwrap().contains("invalid type"),
        "{r:#}"
    );
}

#[test]
fn cancelling_a_flow_cancels_its_slurm_jobs() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    let marker = format!("flowcancel{}", std::process::id());
    slurm_tasker(
        &t,
        "sleepy",
        "",
        &format!("#!/bin/sh\ncat >/dev/null\nexec sh -c 'sleep 300' {marker}\n"),
    );
    let id = format!("{marker}-f");
    t.drop_task(
        &format!("{id}.json"),
        &format!(
            r#"{{"id":"{id}","domain":"org.example","payload":{{}},"flow":{{"concurrence":[{{"task":"sleepy"}},{{"task":"sleepy"}}]}}}}"#
        ),
    );
    let e = engine(&t, &c, &[]);
    wait_for("both nodes started", Duration::from_secs(60), || {
        t.points_named(&id, "started").len() == 2
    });
    let jobs: Vec<u64> = t
        .points_named(&id, "started")
        .iter()
        .filter_map(|p| p["job_id"].as_u64())
        .collect();
    cancel_task(&t, &id);
    wait_records(&t, std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(t.must_record(&id)["state"], "aborted");
    for job in jobs {
        wait_for(&format!("job {job} gone"), Duration::from_secs(30), || {
            job_gone(&c, &id, job)
        });
    }
    wait_for(
        "the taskers' processes gone",
        Duration::from_secs(30),
        || !marker_runs(&marker),
    );
    drop(e);
}

#[test]
fn start_timeout_covers_the_time_pending_on_the_cluster() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    // Held: the job pends until its start timeout.
    slurm_tasker(
        &t,
        "held",
        r#""start_timeout":"3s","slurm":{"args":["--hold"]}"#,
        "#!/bin/sh\ncat >/dev/null\n",
    );
    let id = format!("pend{}", std::process::id());
    task(&t, &id, "held", "{}");
    let e = engine(&t, &c, &[]);
    wait_records(&t, std::slice::from_ref(&id), Duration::from_secs(60));
    let r = t.must_record(&id);
    assert_eq!(r["state"], "failed", "{r:#}");
    assert_eq!(r["error"]["kind"], "timeout", "{r:#}");
    assert!(t.points_named(&id, "started").is_empty());
    let job = t.points_named(&id, "submitted")[0]["job_id"]
        .as_u64()
        .unwrap();
    wait_for("the pending job cancelled", Duration::from_secs(30), || {
        job_gone(&c, &id, job)
    });
    drop(e);
}

#[test]
fn a_root_with_a_percent_in_its_path_and_srun_steps_keep_their_environment() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    // Slurm expands `%j` in a file name given to sbatch.
    let t = TestRoot::named("r 3%j ");
    slurm_tasker(
        &t,
        "steps",
        "",
        "#!/bin/sh\ncat >/dev/null\n\
         srun --ntasks=1 /usr/bin/env > \"$SPOOLFLOW_ROOT/step-env\" || exit 3\n\
         echo '{}'\n",
    );
    task(&t, "pct", "steps", "{}");
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let r = t.must_record("pct");
    assert_eq!(r["state"], "completed", "{r:#}");
    // An `srun` step of the tasker sees the tasker's environment (SPEC 6).
    let env = std::fs::read_to_string(t.join("step-env")).unwrap();
    assert!(env.contains("SPOOLFLOW_ID=pct\n"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(
        !env.contains("hunter2"),
        "the engine's own environment: {env}"
    );
}

#[test]
fn a_reply_lost_with_its_file_is_a_work_error_not_an_empty_reply() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    // Replies `failed`, but its reply file (in the job's directory, beside
    // `$SPOOLFLOW_POINTS`) is gone before the engine reads it.
    slurm_tasker(
        &t,
        "lost",
        r#""retries":0"#,
        "#!/bin/sh\ncat >/dev/null\nrm -f \"$(dirname \"$SPOOLFLOW_POINTS\")/out\"\n\
         echo '{\"point\":\"failed\",\"reason\":\"no\"}'\n",
    );
    let id = format!("gn{}", std::process::id());
    task(&t, &id, "lost", r#"{"keep":1}"#);
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let r = t.must_record(&id);
    assert_eq!(r["state"], "failed", "{r:#}");
    assert_eq!(r["error"]["kind"], "work", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cannot be read"),
        "{r:#}"
    );
}
