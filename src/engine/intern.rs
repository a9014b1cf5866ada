//! One shared copy of each domain and taskee name among the engine's
//! nodes: every task file parsed brings its own copy of its domain and
//! requested taskee, and a deep queue holds the same few names many
//! thousand times. A name is a shared string (`Arc<str>`), so keeping the
//! first copy seen and dropping the others costs nothing but a lookup.
//!
//! The table is bounded: past [`MAX_NAMES`] distinct names (a hostile or
//! unusual spool), further names are kept as they come, unshared.

use std::collections::HashSet;
use std::hash::Hash;

use super::state::NodeTask;
use crate::model::names::{Domain, Taskee};

/// Distinct names of each kind kept for sharing.
pub const MAX_NAMES: usize = 4096;

/// The engine's shared names.
#[derive(Debug, Default)]
pub struct Names {
    domains: HashSet<Domain>,
    taskees: HashSet<Taskee>,
}

impl Names {
    /// Makes a queued task's domain and requested taskee the shared ones.
    pub fn share(&mut self, task: &mut NodeTask) {
        task.domain = shared(&mut self.domains, &task.domain);
        if let Some(t) = &task.tasker {
            task.tasker = Some(shared(&mut self.taskees, t));
        }
    }
}

/// The copy of `name` in `table`, added first when there is room.
fn shared<T: Clone + Eq + Hash>(table: &mut HashSet<T>, name: &T) -> T {
    if let Some(kept) = table.get(name) {
        return kept.clone();
    }
    if table.len() < MAX_NAMES {
        table.insert(name.clone());
    }
    name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_the_first_copy_up_to_the_bound() {
        let mut table = HashSet::new();
        let a1: Domain = "org.a".parse().unwrap();
        let a2: Domain = "org.a".parse().unwrap();
        let first = shared(&mut table, &a1);
        let second = shared(&mut table, &a2);
        assert_eq!(first, second);
        assert!(std::ptr::eq(first.as_str(), second.as_str()));
        assert!(!std::ptr::eq(a2.as_str(), second.as_str()));
        for i in 0..MAX_NAMES + 10 {
            let d: Domain = format!("org.d{i}").parse().unwrap();
            assert_eq!(shared(&mut table, &d), d);
        }
        assert_eq!(table.len(), MAX_NAMES);
    }
}
