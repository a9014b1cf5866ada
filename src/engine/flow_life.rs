//! Where a flow is in its own life ([`FlowLife`]), and the one decision
//! that rests on it alone: whether a cancel comes too late.

use crate::flow::run::End;

/// Where a flow is in its own life.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowLife {
    /// Its nodes run.
    Running,
    /// It ended (completed or failed); its record is written once no
    /// tasker of it runs any more.
    Ending(End),
    /// Cancelled: its record (`aborted`) is written once no tasker of it
    /// runs any more.
    Aborting(String),
    /// Its record is being committed.
    Recording,
}

impl FlowLife {
    /// Whether a cancel comes too late (SPEC 8) for a flow in this life
    /// whose own state has `decided` its end (pure): once it completed or
    /// failed (it may wait for its last taskers to stop), while its record
    /// is written, and also while the progress that says it ended is
    /// still being saved (its life is `Running` until then): a cancel must
    /// not turn that end into `aborted`. A flow being cancelled has not
    /// ended: a second cancel changes nothing.
    pub fn too_late_to_cancel(&self, decided: bool) -> bool {
        match self {
            FlowLife::Ending(_) | FlowLife::Recording => true,
            FlowLife::Aborting(_) => false,
            FlowLife::Running => decided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_is_too_late_once_the_end_is_decided_even_before_it_is_saved() {
        let ended = FlowLife::Ending(End::Completed(Default::default()));
        let aborting = FlowLife::Aborting("cancelled".into());
        for (life, decided, late) in [
            (FlowLife::Running, false, false),
            // The last step decided the end; its progress is being saved.
            (FlowLife::Running, true, true),
            (ended.clone(), true, true),
            (FlowLife::Recording, true, true),
            (aborting.clone(), false, false),
            (aborting, true, false),
        ] {
            assert_eq!(life.too_late_to_cancel(decided), late, "{life:?} {decided}");
        }
    }
}
