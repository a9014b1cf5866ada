//! Tests of `engine::run` as a task of its runtime.

use super::*;
use std::time::{Duration, Instant};

/// `run` spawns the engine as a task of the runtime; a caller that
/// drops `run`'s future still stops the engine, whose lock then comes
/// free, instead of leaving it running with no owner.
#[test]
fn dropping_the_future_of_run_stops_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Root::new(tmp.path()).unwrap();
    root.init().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        let engine = run(root.clone(), Options::default(), None);
        tokio::pin!(engine);
        // Until the engine has locked the root and written its pid.
        while !std::fs::read_to_string(root.lock()).is_ok_and(|s| s.contains("workers")) {
            assert!(Instant::now() < deadline, "the engine never started");
            tokio::select! {
                r = &mut engine => panic!("the engine ended: {:?}", r.err()),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    });
    // `run`'s future is dropped; the runtime goes on turning.
    rt.block_on(async {
        while lock::lock(&root).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the dropped engine still holds its root"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}
