//! The subreaper's sweep (see `contain`): when a task ends, the engine's
//! children that carry the task's variables are killed and reaped, round
//! after round. Which children are looked at: those of the main thread's
//! `children` file (read through one descriptor kept open), less the
//! leaders of the taskers running beside it ([`Leaders`]), so that the
//! cost of a task's end does not grow with the number of taskers running.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Whether a process environment holds every one of `vars` (`NAME=value`).
pub fn env_has_all(env: &[u8], vars: &[&[u8]]) -> bool {
    vars.iter()
        .all(|want| env.split(|b| *b == 0).any(|var| var == *want))
}

/// The subreaper's sweep when a task ends: kills and reaps the engine's
/// children that carry the task's variables, and the zombies of the
/// tasker's group re-parented to it; then again, as the children of the
/// killed are re-parented in turn. Returns how many were killed.
pub(super) fn sweep(vars: &[&[u8]], pgid: i32, leaders: &Leaders) -> usize {
    let me = engine_pid();
    let mut killed = 0;
    for _ in 0..64 {
        let mut victims = Vec::new();
        for child in children(me, pgid, leaders) {
            if is_ours(&child, vars, pgid, leaders) {
                victims.push(child);
            }
        }
        if victims.is_empty() {
            break;
        }
        for v in &victims {
            if v.state != 'Z' && kill(Pid::from_raw(v.pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        // Each is the engine's child: waiting for it reaps it, and its
        // own children are re-parented to the engine before it is seen.
        for v in &victims {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(v.pid), None);
        }
    }
    killed
}

/// Whether a child of the engine descends from the tasker of group
/// `pgid`, whose environment held `vars`. A member of the tasker's group
/// is the task's in any state: one dying of the group's `SIGKILL` shows
/// an empty environment and is not a zombie yet. Not the group's leader:
/// the tasker was reaped by its own driver before the sweep, so a process
/// with its pid is a newer tasker that reuses the number. And not while
/// a running tasker's leader has that number (the group's number was
/// free again, so the group is another tasker's): then only the
/// environment tells, as for a process that left the group.
pub(super) fn is_ours(child: &Child, vars: &[&[u8]], pgid: i32, leaders: &Leaders) -> bool {
    if child.pgrp == pgid && pgid > 1 && child.pid != pgid && !leaders.contains(pgid) {
        return true;
    }
    // A zombie shows no environment.
    child.state != 'Z'
        && std::fs::read(format!("/proc/{}/environ", child.pid))
            .is_ok_and(|env| env_has_all(&env, vars))
}

/// A child of the engine.
pub(super) struct Child {
    pid: i32,
    state: char,
    pgrp: i32,
}

/// The leaders of the taskers the engine runs, from their spawn until
/// their driver reaps them. Each is a child of the engine and never what
/// a task left behind (a number is reused only once its process was
/// reaped, and it leaves the set as it is): the sweep at each task's end
/// skips them without reading their `/proc` entries, so that its cost
/// does not grow with the number of taskers running beside it.
#[derive(Debug, Clone, Default)]
pub struct Leaders(Arc<Mutex<HashSet<i32>>>);

impl Leaders {
    pub(super) fn insert(&self, pid: i32) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(pid);
        }
    }

    pub(super) fn remove(&self, pid: i32) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(&pid);
        }
    }

    fn contains(&self, pid: i32) -> bool {
        self.0.lock().is_ok_and(|set| set.contains(&pid))
    }
}

/// The engine's children that may descend from the tasker `leader`
/// (running taskers' leaders left out): from
/// `/proc/<pid>/task/<pid>/children` (the main thread adopts the
/// re-parented ones) when the kernel has it, otherwise by reading the
/// parent of the processes started after the leader (pids grow; all of
/// them once pids wrapped around).
pub(super) fn children(me: i32, leader: i32, leaders: &Leaders) -> Vec<Child> {
    let pids: Vec<i32> = match listed_children(me) {
        Ok(text) => text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => {
            let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                .ok()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            let since = if last > leader { leader } else { 0 };
            std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                        .filter(|pid| *pid > since)
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    children_among(pids, me, leaders)
}

/// Which of `pids` are children of the engine `me`, less running
/// taskers' leaders (whose `/proc` entries are not read).
fn children_among(pids: Vec<i32>, me: i32, leaders: &Leaders) -> Vec<Child> {
    pids.into_iter()
        .filter(|pid| !leaders.contains(*pid))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`; comm may hold anything.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut f = rest.split_whitespace();
            let state = f.next()?.chars().next()?;
            let ppid: i32 = f.next()?.parse().ok()?;
            let pgrp: i32 = f.next()?.parse().ok()?;
            (ppid == me).then_some(Child { pid, state, pgrp })
        })
        .collect()
}

/// The engine's pid, asked of the kernel once (it is asked at every
/// task's end).
pub(super) fn engine_pid() -> i32 {
    static PID: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *PID.get_or_init(|| std::process::id() as i32)
}

/// The main thread's `children` file, read from its start each time
/// through one descriptor kept open (a `seq_file`: a read at offset 0
/// lists the children of that moment).
fn listed_children(me: i32) -> io::Result<String> {
    static FILE: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    let Some(file) = FILE
        .get_or_init(|| File::open(format!("/proc/{me}/task/{me}/children")).ok())
        .as_ref()
    else {
        return Err(io::ErrorKind::NotFound.into());
    };
    read_from_start(file)
}

/// All of a file read from offset 0, without moving its offset.
/// A `seq_file` read returns at most a page, and may return less than
/// that with more to come: read until it gives nothing.
fn read_from_start(file: &File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0; 4096];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(2 * bytes.len(), 0);
        }
        let n = file.read_at(&mut bytes[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|_| io::ErrorKind::InvalidData.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_of_the_group_is_the_tasks_only_when_it_is_not_its_groups_leader() {
        let none = Leaders::default();
        let vars: [&[u8]; 1] = [b"SPOOLFLOW_EXID=x"];
        // pids far above any real one: their environ cannot be read.
        for state in ['Z', 'R', 'S', 'X'] {
            let child = |pid, pgrp| Child { pid, state, pgrp };
            assert!(is_ours(
                &child(4_000_101, 4_000_100),
                &vars,
                4_000_100,
                &none
            ));
            assert!(!is_ours(&child(4_000_101, 200), &vars, 4_000_100, &none));
            // A new tasker that got the pid of the task's reaped leader.
            assert!(!is_ours(
                &child(4_000_100, 4_000_100),
                &vars,
                4_000_100,
                &none
            ));
            assert!(!is_ours(&child(2, 1), &vars, 1, &none));
            // The group's number is a running tasker's now.
            let running = Leaders::default();
            running.insert(4_000_100);
            assert!(!is_ours(
                &child(4_000_101, 4_000_100),
                &vars,
                4_000_100,
                &running
            ));
        }
    }

    #[test]
    fn a_children_file_longer_than_a_page_is_read_whole() {
        let tid = nix::unistd::gettid();
        let file = File::open(format!("/proc/self/task/{tid}/children")).unwrap();
        // 1 200 children: about 8 KiB of pids, where a read gives at most
        // a page and may stop short of it.
        let mut kids: Vec<std::process::Child> = (0..1200)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let listed: Vec<u32> = read_from_start(&file)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let all = kids.iter().all(|k| listed.contains(&k.id()));
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
        assert!(all, "{} listed of 1 200", listed.len());
    }

    #[test]
    fn an_environment_matches_only_with_every_variable() {
        let env = b"PATH=/bin\0SPOOLFLOW_ROOT=/r\0SPOOLFLOW_EXID=x\0SPOOLFLOW_NID=0\0";
        let (r, x, n): (&[u8], &[u8], &[u8]) = (
            b"SPOOLFLOW_ROOT=/r",
            b"SPOOLFLOW_EXID=x",
            b"SPOOLFLOW_NID=0",
        );
        assert!(env_has_all(env, &[r, x, n]));
        assert!(!env_has_all(env, &[r, b"SPOOLFLOW_EXID=xy", n]));
        assert!(!env_has_all(env, &[b"SPOOLFLOW_ROOT=/", x]));
    }

    #[test]
    fn a_running_taskers_leader_is_never_looked_at() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let leaders = Leaders::default();
        let found = children_among(vec![pid], me, &leaders);
        assert_eq!(found.iter().map(|c| c.pid).collect::<Vec<_>>(), [pid]);
        leaders.insert(pid);
        assert!(children_among(vec![pid], me, &leaders).is_empty());
        leaders.remove(pid);
        assert_eq!(children_among(vec![pid], me, &leaders).len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_children_file_read_again_lists_the_children_of_that_moment() {
        let tid = nix::unistd::gettid();
        let file = File::open(format!("/proc/self/task/{tid}/children")).unwrap();
        let listed = |file: &File| -> Vec<u32> {
            read_from_start(file)
                .unwrap()
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect()
        };
        let before = listed(&file);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(listed(&file).contains(&child.id()), "{before:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!listed(&file).contains(&child.id()));
    }
}
