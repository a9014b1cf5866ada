//! SPEC 14 recovery on a real Slurm cluster: an engine killed while its
//! jobs run re-attaches them, a job submitted just before a crash is found
//! by its name, an unreachable controller is waited for, a job lost with
//! its node is retried. Skipped, loudly, without a cluster (see
//! `common::slurm`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::slurm::SlurmCluster;
use crate::common::*;
use crate::slurm_exec::{
    cancel_task, engine, engine_command, jobs_of, slurm_tasker, started_job, task, wait_records,
};

/// Tasks whose tasker appends its id to a ledger once it has slept
/// `secs` seconds.
fn ledger_tasker(t: &TestRoot) {
    slurm_tasker(
        t,
        "ledger",
        "",
        "#!/bin/sh\nsecs=$(cat | sed -n 's/.*\"secs\":\\([0-9]*\\).*/\\1/p')\n\
         echo '{\"point\":\"sleeping\"}' >> \"$SPOOLFLOW_POINTS\"\nsleep \"$secs\"\n\
         echo \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/ledger\"\necho '{\"ran\":true}'\n",
    );
}

fn ledger_counts(t: &TestRoot) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(t.join("ledger"))
        .unwrap_or_default()
        .lines()
    {
        *counts.entry(line.to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn a_killed_engine_reattaches_its_jobs_and_runs_none_twice() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    ledger_tasker(&t);
    let ids: Vec<String> = (0..10)
        .map(|i| format!("k{}-{i}", std::process::id()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        // Half end while the engine is down, half after it is back.
        let secs = if i % 2 == 0 { 8 } else { 18 };
        task(&t, id, "ledger", &format!(r#"{{"secs":{secs}}}"#));
    }
    // A flow's Slurm node is re-attached too.
    let flow = format!("kf{}", std::process::id());
    t.drop_task(
        &format!("{flow}.json"),
        &format!(
            r#"{{"id":"{flow}","domain":"org.example","payload":{{"secs":4}},"flow":{{"sequence":[{{"task":"ledger"}}]}}}}"#
        ),
    );
    let e = engine(&t, &c, &[]);
    for id in &ids {
        started_job(&t, id);
    }
    started_job(&t, &flow);
    // Each job's own point is copied before the crash (and not again after).
    wait_for(
        "the jobs' own points copied",
        Duration::from_secs(30),
        || {
            ids.iter()
                .all(|id| !t.points_named(id, "sleeping").is_empty())
        },
    );
    e.signal(nix::sys::signal::Signal::SIGKILL);
    drop(e);
    // None had ended: the short ones end while the engine is down.
    assert!(
        ids.iter().all(|id| t.record(id).is_none()),
        "a job ended before the crash"
    );
    wait_for(
        "the short jobs ended while the engine was down",
        Duration::from_secs(60),
        || ledger_counts(&t).len() >= 5,
    );
    let e = engine(&t, &c, &["--drain"]);
    let (code, err) = e.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let counts = ledger_counts(&t);
    for id in &ids {
        let r = t.must_record(id);
        assert_eq!(r["state"], "completed", "{r:#}");
        assert_eq!(r["payload"]["ran"], true, "{r:#}\n{:#?}", t.points(id));
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} ran {:?} times",
            counts.get(id)
        );
        assert!(
            t.points_named(id, "recovered").is_empty(),
            "{id} was recovered, not re-attached"
        );
        assert_eq!(t.points_named(id, "started").len(), 1, "{id}: one start");
        assert_eq!(
            t.points_named(id, "sleeping").len(),
            1,
            "{id}: its point once"
        );
    }
    let f = t.must_record(&flow);
    assert_eq!(f["state"], "completed", "{f:#}");
    assert_eq!(f["payload"]["ran"], true, "{f:#}");
    assert!(
        t.points_named(&flow, "recovered").is_empty(),
        "the flow's node was re-attached"
    );
    let runs = std::fs::read_to_string(t.join("ledger")).unwrap();
    assert_eq!(runs.lines().filter(|l| *l == flow).count(), 1, "{runs}");
}

/// Runs an engine that dies between `sbatch` and the durable write of
/// the job id (the debug build's fault point); the jobs of `id` then, one.
fn crash_after_sbatch(t: &TestRoot, c: &SlurmCluster, id: &str) -> Vec<(u64, String)> {
    let mut crashing = engine_command(t, c, &[]);
    crashing.env("SPOOLFLOW_CRASH_AFTER_SBATCH", "1");
    let (code, _) = EngineProcess::spawn(&mut crashing).wait(Duration::from_secs(60));
    assert_ne!(code, Some(0), "the engine died at the fault point");
    let jobs = jobs_of(c, id);
    assert_eq!(jobs.len(), 1, "sbatch ran once before the crash: {jobs:?}");
    jobs
}

#[test]
fn a_job_submitted_just_before_a_crash_is_found_by_its_name() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    ledger_tasker(&t);
    let id = format!("crash{}", std::process::id());
    // Still running at the restart: only its name finds it.
    task(&t, &id, "ledger", r#"{"secs":6}"#);
    let jobs = crash_after_sbatch(&t, &c, &id);
    let job_dir = t.join(&format!("var/slurm/{id}.0.1.1"));
    assert!(
        !job_dir.join("job_id").exists(),
        "the crash came before the id was recorded"
    );
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(t.must_record(&id)["state"], "completed");
    assert_eq!(jobs_of(&c, &id).len(), 1, "not submitted twice");
    let recorded = std::fs::read_to_string(job_dir.join("job_id")).unwrap();
    assert_eq!(recorded.trim(), jobs[0].0.to_string(), "found by its name");
    assert_eq!(t.points_named(&id, "started")[0]["job_id"], jobs[0].0);
    assert_eq!(ledger_counts(&t).get(&id), Some(&1));
    assert!(t.points_named(&id, "recovered").is_empty());
}

#[test]
fn a_job_of_another_root_with_the_same_name_is_not_adopted() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    // Two roots, each with a task of the same id: their jobs share a name.
    let id = format!("twin{}", std::process::id());
    let (mine, other) = (TestRoot::new(), TestRoot::new());
    ledger_tasker(&mine);
    ledger_tasker(&other);
    task(&mine, &id, "ledger", r#"{"secs":0}"#);
    let jobs = crash_after_sbatch(&mine, &c, &id);
    let my_job = jobs[0].0;
    wait_for("its job ended", Duration::from_secs(60), || {
        jobs_of(&c, &id)
            .iter()
            .any(|(j, s)| *j == my_job && s == "COMPLETED")
    });
    // The other root's job of that name is newer and still runs.
    task(&other, &id, "ledger", r#"{"secs":60}"#);
    let other_engine = engine(&other, &c, &[]);
    let other_job = started_job(&other, &id);
    assert!(other_job > my_job);

    let (code, err) = engine(&mine, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let record = mine.must_record(&id);
    assert_eq!(record["state"], "completed", "{record:#}");
    assert_eq!(mine.points_named(&id, "started")[0]["job_id"], my_job);
    let recorded = std::fs::read_to_string(mine.join(&format!("var/slurm/{id}.0.1.1/job_id")));
    assert_eq!(recorded.unwrap().trim(), my_job.to_string());
    assert!(mine.points_named(&id, "recovered").is_empty());
    drop(other_engine);
    let _ = c.command("scancel").arg(other_job.to_string()).output();
}

#[test]
fn an_unreachable_controller_is_waited_for() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    ledger_tasker(&t);
    let ids: Vec<String> = (0..3)
        .map(|i| format!("ctld{}-{i}", std::process::id()))
        .collect();
    for id in &ids {
        // Still running when the controller is back.
        task(&t, id, "ledger", r#"{"secs":24}"#);
    }
    let e = engine(&t, &c, &[]);
    for id in &ids {
        started_job(&t, id);
    }
    c.stop_ctld();
    // A task that arrives meanwhile is submitted once the controller is back.
    let late = format!("ctld{}-late", std::process::id());
    task(&t, &late, "ledger", r#"{"secs":1}"#);
    let down = Instant::now();
    wait_for("a suspended point", Duration::from_secs(30), || {
        ids.iter()
            .any(|id| !t.points_named(id, "suspended").is_empty())
    });
    // Twenty seconds down in all, counted from the stop.
    while down.elapsed() < Duration::from_secs(20) {
        assert!(
            ids.iter().all(|id| t.record(id).is_none()),
            "a task ended while the controller was down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(t.record(&late).is_none());
    c.start_ctld();
    let mut all = ids.clone();
    all.push(late.clone());
    wait_records(&t, &all, Duration::from_secs(120));
    for id in &all {
        assert_eq!(t.must_record(id)["state"], "completed", "{id}");
        assert_eq!(ledger_counts(&t).get(id), Some(&1), "{id} ran once");
    }
    let reasons: Vec<String> = all
        .iter()
        .flat_map(|id| t.points_named(id, "suspended"))
        .filter_map(|p| p["reason"].as_str().map(String::from))
        .collect();
    assert!(!reasons.is_empty(), "no suspended point");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("Unable to contact slurm controller")),
        "{reasons:?}"
    );
    drop(e);
}

#[test]
fn a_cluster_at_its_submit_limit_is_waited_for_and_a_cancel_ends_the_wait() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    // The development cluster refuses these jobs, as a cluster at its
    // submit limit does, until the file `accepting` exists, and counts
    // its refusals in `accepting.refused`.
    let gate = t.join("accepting");
    slurm_tasker(
        &t,
        "limited",
        &format!(
            r#""slurm":{{"args":["--comment=refuse-until:{}"]}}"#,
            gate.display()
        ),
        "#!/bin/sh\ncat\n",
    );
    let waits: Vec<String> = (0..3)
        .map(|i| format!("lim{}-waits{i}", std::process::id()))
        .collect();
    let cancelled = format!("lim{}-cancelled", std::process::id());
    for (i, id) in waits.iter().enumerate() {
        task(&t, id, "limited", &format!(r#"{{"n":{i}}}"#));
    }
    task(&t, &cancelled, "limited", "{}");
    let e = engine(&t, &c, &[]);
    for id in waits.iter().chain([&cancelled]) {
        wait_for("a suspended point", Duration::from_secs(60), || {
            t.points_named(id, "suspended").iter().any(|p| {
                p["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("QOSMaxSubmitJobPerUserLimit"))
            })
        });
    }
    // Never failed, and tried again by one submission at a time, 5 s
    // after the last refusal: at most 3 tries in 11 s, where four
    // submissions each trying every 5 s would make 8.
    let refusals = || {
        std::fs::read_to_string(t.join("accepting.refused"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let (tries, before) = (Instant::now(), refusals());
    while tries.elapsed() < Duration::from_secs(11) {
        assert!(waits
            .iter()
            .chain([&cancelled])
            .all(|id| t.record(id).is_none()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let retried = refusals() - before;
    assert!(retried <= 3, "{retried} refused tries in 11 s");
    // A cancel ends the wait at once: nothing was submitted.
    cancel_task(&t, &cancelled);
    wait_records(
        &t,
        std::slice::from_ref(&cancelled),
        Duration::from_secs(30),
    );
    assert_eq!(t.must_record(&cancelled)["state"], "aborted");
    assert!(t.points_named(&cancelled, "submitted").is_empty());
    // Once the cluster takes jobs again, the others run, each once.
    std::fs::write(&gate, "").unwrap();
    wait_records(&t, &waits, Duration::from_secs(60));
    for (i, id) in waits.iter().enumerate() {
        let r = t.must_record(id);
        assert_eq!(r["state"], "completed", "{r:#}");
        assert_eq!(r["payload"]["n"], i);
        assert_eq!(jobs_of(&c, id).len(), 1);
    }
    assert!(jobs_of(&c, &cancelled).is_empty());
    drop(e);
}

/// Sets the cluster's node back to service when dropped.
struct NodeDown<'a>(&'a SlurmCluster, String);

impl Drop for NodeDown<'_> {
    fn drop(&mut self) {
        // Refused when the node came back by itself (ReturnToService).
        self.0
            .scontrol_lenient(&["update", &format!("nodename={}", self.1), "state=resume"]);
    }
}

#[test]
fn a_job_lost_with_its_node_is_a_work_error_and_retried() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    let marker = format!("nodefail{}", std::process::id());
    slurm_tasker(
        &t,
        "fragile",
        r#""retries":1"#,
        &format!(
            "#!/bin/sh\ncat >/dev/null\nif [ \"$SPOOLFLOW_ATTEMPT\" = 1 ]; then sh -c 'sleep 300' {marker}; exit 1; fi\n\
             echo \"$SPOOLFLOW_ATTEMPT\" >> \"$SPOOLFLOW_ROOT/ledger\"\necho '{{\"survived\":true}}'\n"
        ),
    );
    let id = format!("{marker}-t");
    task(&t, &id, "fragile", "{}");
    let e = engine(&t, &c, &[]);
    started_job(&t, &id);
    let node = t.points_named(&id, "started")[0]["node"]
        .as_str()
        .unwrap()
        .to_string();
    {
        let _down = NodeDown(&c, node.clone());
        c.scontrol(&[
            "update",
            &format!("nodename={node}"),
            "state=down",
            "reason=spoolflow-test",
        ]);
        wait_for("the lost attempt retried", Duration::from_secs(60), || {
            !t.points_named(&id, "retried").is_empty()
        });
    }
    wait_records(&t, std::slice::from_ref(&id), Duration::from_secs(120));
    let r = t.must_record(&id);
    assert_eq!(r["state"], "completed", "{r:#}");
    assert_eq!(r["payload"]["survived"], true);
    let retried = &t.points_named(&id, "retried")[0];
    assert_eq!(retried["kind"], "work", "{retried}");
    assert!(
        retried["reason"].as_str().unwrap().contains("NODE_FAIL"),
        "{retried}"
    );
    let ledger = std::fs::read_to_string(t.join("ledger")).unwrap();
    assert_eq!(ledger.trim(), "2", "only the second attempt ran to its end");
    drop(e);
}

#[test]
fn a_job_the_cluster_forgot_without_a_result_runs_again_as_recovered() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    // Its first run never ends by itself; its second ends at once.
    slurm_tasker(
        &t,
        "once",
        "",
        "#!/bin/sh\ncat >/dev/null\nif [ \"$SPOOLFLOW_ATTEMPT\" = 1 ]; then sleep 300; fi\n\
         echo \"$SPOOLFLOW_ID\" >> \"$SPOOLFLOW_ROOT/ledger\"\n",
    );
    let id = format!("forgot{}", std::process::id());
    task(&t, &id, "once", "{}");
    let e = engine(&t, &c, &[]);
    let job = started_job(&t, &id);
    e.signal(nix::sys::signal::Signal::SIGKILL);
    drop(e);
    // While the engine is down the job goes, leaving nothing, and its id
    // names a job the cluster never had (as after a controller lost its
    // state).
    let out = c.command("scancel").arg(job.to_string()).output().unwrap();
    assert!(out.status.success());
    wait_for("the job ended", Duration::from_secs(30), || {
        jobs_of(&c, &id)
            .iter()
            .all(|(_, st)| st != "RUNNING" && st != "COMPLETING")
    });
    let dir = t.join(&format!("var/slurm/{id}.0.1.1"));
    let _ = std::fs::remove_file(dir.join("status"));
    std::fs::write(dir.join("job_id"), "987654321\n").unwrap();
    let (code, err) = engine(&t, &c, &["--drain"]).wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    let r = t.must_record(&id);
    assert_eq!(r["state"], "completed", "{r:#}");
    assert_eq!(r["attempts"], 2, "{r:#}");
    let recovered = t.points_named(&id, "recovered");
    assert_eq!(recovered.len(), 1, "run again as recovered");
    assert_eq!(recovered[0]["attempt"], 2);
    assert_eq!(
        ledger_counts(&t).get(&id),
        Some(&1),
        "the second run only reached its end"
    );
}

#[test]
fn a_retried_task_runs_as_a_new_job_even_when_submitted_during_an_outage() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    // Fails its first run, completes its second.
    slurm_tasker(
        &t,
        "second-time",
        r#""retries":0"#,
        "#!/bin/sh\ncat >/dev/null\n\
         if [ -e \"$SPOOLFLOW_ROOT/ran-once\" ]; then echo '{\"ok\":2}'; exit 0; fi\n\
         touch \"$SPOOLFLOW_ROOT/ran-once\"\nexit 1\n",
    );
    let id = format!("rt{}", std::process::id());
    task(&t, &id, "second-time", "{}");
    let e = engine(&t, &c, &[]);
    wait_records(&t, std::slice::from_ref(&id), Duration::from_secs(60));
    let first = t.must_record(&id);
    assert_eq!(first["state"], "failed", "{first:#}");
    // Retried while the controller is down: the submission waits, and
    // once it answers the engine must not take the first run's job (same
    // task, same node, same first offer) for the new run.
    c.stop_ctld();
    let out = t.cmd().args(["retry", &id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the new attempt to wait for the controller",
        DEADLINE,
        || {
            t.points(&id).iter().any(|p| {
                p["point"] == "suspended" && p["reason"].as_str().unwrap_or("").contains("submit")
            })
        },
    );
    c.start_ctld();
    wait_for("the retried run's record", Duration::from_secs(90), || {
        t.record(&id).is_some_and(|r| r["state"] != "failed")
    });
    drop(e);
    let r = t.must_record(&id);
    assert_eq!(r["state"], "completed", "{r:#}");
    assert_eq!(r["payload"]["ok"], 2, "{r:#}");
    let started: Vec<_> = t.points_named(&id, "started");
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ne!(started[0]["job_id"], started[1]["job_id"], "a new job");
    // Each run keeps its own files.
    for dir in [format!("{id}.0.1.1"), format!("{id}.0.2.1")] {
        assert!(t.join(&format!("var/slurm/{dir}/status")).exists(), "{dir}");
    }
}

#[test]
fn a_cancel_during_an_outage_ends_the_job_once_the_controller_answers() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    slurm_tasker(
        &t,
        "long",
        "",
        // Longer than every wait of this test together (up to 90 + 60 +
        // 60 s and a restart of the controller on a loaded machine): only
        // the engine's cancel can end it first. `finished` only if the
        // sleep ran out: Slurm signals the job's processes one by one, so
        // the shell may outlive a killed `sleep` long enough for one more
        // command.
        "#!/bin/sh\ncat >/dev/null\nsleep 900 && touch \"$SPOOLFLOW_ROOT/finished\"\necho '{}'\n",
    );
    let id = format!("oc{}", std::process::id());
    task(&t, &id, "long", "{}");
    let e = engine(&t, &c, &["--kill-grace", "1s"]);
    let job = started_job(&t, &id);
    c.stop_ctld();
    cancel_task(&t, &id);
    // Both the TERM and the kill after the grace fail while the
    // controller is down.
    let refused = format!("scancel of job {job} failed");
    wait_for("the scancels to fail", Duration::from_secs(90), || {
        std::fs::read_to_string(t.join("var/log/engine.log"))
            .unwrap_or_default()
            .matches(&refused)
            .count()
            >= 2
    });
    c.start_ctld();
    // Ended by the engine once Slurm answers, long before its 900 s.
    wait_for("the job to be cancelled", Duration::from_secs(60), || {
        crate::slurm_exec::job_gone(&c, &id, job)
    });
    wait_records(&t, std::slice::from_ref(&id), Duration::from_secs(60));
    drop(e);
    assert_eq!(t.must_record(&id)["state"], "aborted");
    let state = jobs_of(&c, &id)
        .into_iter()
        .find(|(j, _)| *j == job)
        .map(|(_, s)| s);
    assert_eq!(state.as_deref(), Some("CANCELLED"), "job {job}");
    assert!(!t.join("finished").exists(), "the tasker ran to its end");
}

/// A tasker whose jobs stay pending (held), with a start timeout.
fn held_tasker(t: &TestRoot) {
    slurm_tasker(
        t,
        "held",
        r#""start_timeout":"5s","slurm":{"args":["--hold"]}"#,
        "#!/bin/sh\ncat >/dev/null\necho '{}'\n",
    );
}

/// The task failed `timeout` and its job is gone from the cluster.
fn timed_out_at_start(t: &TestRoot, c: &SlurmCluster, id: &str) {
    wait_records(t, &[id.to_string()], Duration::from_secs(90));
    let r = t.must_record(id);
    assert_eq!(r["state"], "failed", "{r:#}");
    assert_eq!(r["error"]["kind"], "timeout", "{r:#}");
    let job = t.points_named(id, "submitted")[0]["job_id"]
        .as_u64()
        .unwrap();
    wait_for("the held job cancelled", Duration::from_secs(30), || {
        crate::slurm_exec::job_gone(c, id, job)
    });
}

#[test]
fn start_timeout_holds_for_a_job_re_attached_after_a_crash() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    held_tasker(&t);
    let id = format!("st{}", std::process::id());
    task(&t, &id, "held", "{}");
    let e = engine(&t, &c, &[]);
    wait_for("the job submitted", Duration::from_secs(60), || {
        !t.points_named(&id, "submitted").is_empty()
    });
    drop(e); // SIGKILL: a crash while the job is pending
    let _e = engine(&t, &c, &[]);
    timed_out_at_start(&t, &c, &id);
}

#[test]
fn start_timeout_holds_while_sbatch_waits_for_the_controller() {
    let Some(c) = crate::common::slurm::cluster() else {
        return;
    };
    let t = TestRoot::new();
    held_tasker(&t);
    let id = format!("sw{}", std::process::id());
    let _e = engine(&t, &c, &[]);
    c.stop_ctld();
    task(&t, &id, "held", "{}");
    wait_for(
        "the submission to wait for the controller",
        DEADLINE,
        || !t.points_named(&id, "suspended").is_empty(),
    );
    // The start timeout (5 s from `created`) passes during the outage.
    let created = Instant::now();
    wait_for("the start timeout to pass", Duration::from_secs(30), || {
        created.elapsed() > Duration::from_secs(6)
    });
    c.start_ctld();
    timed_out_at_start(&t, &c, &id);
}
