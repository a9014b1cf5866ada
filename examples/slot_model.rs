//! A model of the engine's start path, to tell how much of the gap to the
//! fork floor comes from where the engine's work runs rather than from how
//! much of it there is. Each task costs `work_us` of CPU (a spin standing
//! for the engine's own work per task: its outcome, record, points and
//! next offer) and one run of the tasker (stdin written, stdout read, the
//! exit waited for), two slots at a time, in one of two shapes:
//!
//! - `slot`: each slot has its own thread, which does the work and then
//!   forks and waits on its own tasker (the shape of the bench's floor);
//! - `loop`: one thread serves both slots, as the engine's event loop
//!   does: it takes the exits in turn, and each exit's work and the next
//!   spawn wait for the thread;
//! - `hand`: each slot's thread forks and waits on its tasker, and tells
//!   one work thread of the exit; the work thread does the work and sends
//!   the slot its next task (spawns leave the loop, the work does not);
//! - `ahead`: as `hand`, but the work thread keeps one task prepared ahead
//!   for each slot, so that a slot starts its next tasker as soon as the
//!   last one exits, and the work for the one after runs meanwhile.
//!
//! ```sh
//! cargo run --release --example slot_model -- loop /path/to/tasker 3000 270
//! ```
//!
//! The README's Speed section has its figures on this machine.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};

/// Taskers at a time, as in the bench (W=2).
const SLOTS: usize = 2;

/// `work_us` of CPU on this thread.
fn work(work_us: u64) {
    let end = Instant::now() + Duration::from_micros(work_us);
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

/// Starts the tasker in its own group, its payload on stdin.
fn start(tasker: &str, i: usize) -> std::io::Result<Child> {
    let mut child = Command::new(tasker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{{\"i\":{i}}}").as_bytes())?;
    }
    Ok(child)
}

/// Reads the tasker's reply and reaps it.
fn finish(mut child: Child) -> std::io::Result<()> {
    let mut reply = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_end(&mut reply)?;
    }
    child.wait()?;
    Ok(())
}

/// Each slot's own thread does its work, forks, and waits.
fn per_slot(tasker: &str, n: usize, work_us: u64) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let slots: Vec<_> = (0..SLOTS)
            .map(|_| {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(());
                    }
                    work(work_us);
                    finish(start(tasker, i)?)?;
                })
            })
            .collect();
        slots
            .into_iter()
            .try_for_each(|t| t.join().expect("a slot thread panicked"))
    })
}

/// One thread serves both slots: it waits for whichever tasker exits
/// first, then does that exit's work and the slot's next spawn.
fn one_loop(tasker: &str, n: usize, work_us: u64) -> std::io::Result<()> {
    let mut running: Vec<Child> = Vec::new();
    let mut started = 0;
    while started < n.min(SLOTS) {
        work(work_us);
        running.push(start(tasker, started)?);
        started += 1;
    }
    while !running.is_empty() {
        // The exit is seen without reaping it (`finish` reaps).
        let status = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)?;
        let Some(pid) = status.pid() else {
            continue;
        };
        let Some(k) = running.iter().position(|c| c.id() == pid.as_raw() as u32) else {
            // Not a tasker of ours: reaped, or `waitid` would see it again.
            waitpid(pid, None)?;
            continue;
        };
        finish(running.swap_remove(k))?;
        if started < n {
            work(work_us);
            running.push(start(tasker, started)?);
            started += 1;
        }
    }
    Ok(())
}

/// Slot threads fork and wait; one work thread does each task's work and
/// sends the slot its next task, `ahead` tasks ahead (0 or 1).
fn handed(tasker: &str, n: usize, work_us: u64, ahead: usize) -> std::io::Result<()> {
    use std::sync::mpsc;
    let (exit_tx, exit_rx) = mpsc::channel::<std::io::Result<usize>>();
    std::thread::scope(|s| {
        let mut orders = Vec::new();
        for slot in 0..SLOTS {
            let (order_tx, order_rx) = mpsc::channel::<usize>();
            orders.push(order_tx);
            let exit_tx = exit_tx.clone();
            s.spawn(move || {
                // Ends when the work thread drops the slot's sender.
                while let Ok(i) = order_rx.recv() {
                    let ran = start(tasker, i).and_then(finish).map(|()| slot);
                    if exit_tx.send(ran).is_err() {
                        return;
                    }
                }
            });
        }
        drop(exit_tx);
        let mut started = 0;
        let order = |slot: usize, started: &mut usize| {
            if *started < n {
                work(work_us);
                // A slot thread that is gone has reported why.
                let _ = orders[slot].send(*started);
                *started += 1;
            }
        };
        for _ in 0..=ahead {
            for slot in 0..SLOTS {
                order(slot, &mut started);
            }
        }
        for _ in 0..n {
            let slot = exit_rx.recv().map_err(std::io::Error::other)??;
            order(slot, &mut started);
        }
        Ok(())
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shape, tasker, n, work_us] = args.as_slice() else {
        eprintln!("usage: slot_model slot|loop|hand|ahead TASKER N WORK_US");
        std::process::exit(2);
    };
    let n: usize = n.parse().map_err(std::io::Error::other)?;
    let work_us: u64 = work_us.parse().map_err(std::io::Error::other)?;
    let t0 = Instant::now();
    match shape.as_str() {
        "slot" => per_slot(tasker, n, work_us)?,
        "loop" => one_loop(tasker, n, work_us)?,
        "hand" => handed(tasker, n, work_us, 0)?,
        "ahead" => handed(tasker, n, work_us, 1)?,
        other => {
            eprintln!("unknown shape {other:?}: slot, loop, hand or ahead");
            std::process::exit(2);
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    println!("{shape}, {work_us} µs of work per task: {rate:.0} tasks/s");
    Ok(())
}
