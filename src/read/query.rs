//! `list`'s filters, sort and paging over [`Summary`]s (pure).

use std::cmp::Ordering;

use crate::model::names::Domain;
use crate::read::summary::{ListState, Summary};

/// The fields `--sort` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Created,
    Ended,
    Priority,
    Id,
}

/// How to sort: a field, ascending unless `descending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub field: SortField,
    pub descending: bool,
}

impl std::str::FromStr for Sort {
    type Err = String;

    /// `created`, `ended`, `priority`, `id`; a leading `-` for descending.
    fn from_str(s: &str) -> Result<Sort, String> {
        let (descending, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let field = match name {
            "created" => SortField::Created,
            "ended" => SortField::Ended,
            "priority" => SortField::Priority,
            "id" => SortField::Id,
            other => {
                return Err(format!(
                    "cannot sort by {other:?}: use created, ended, priority or id (-FIELD for descending)"
                ))
            }
        };
        Ok(Sort { field, descending })
    }
}

/// What `list` keeps, in which order, and which page of it.
#[derive(Debug, Clone)]
pub struct Query {
    /// Any of these states (all when empty).
    pub states: Vec<ListState>,
    /// Tasks of this domain or below it.
    pub domain: Option<Domain>,
    pub taskee: Option<String>,
    /// Tasks whose last time (end, else creation) is at or after this
    /// timestamp.
    pub since: Option<String>,
    pub sort: Sort,
    pub skip: usize,
    pub limit: Option<usize>,
}

impl Default for Query {
    fn default() -> Query {
        Query {
            states: Vec::new(),
            domain: None,
            taskee: None,
            since: None,
            sort: Sort {
                field: SortField::Created,
                descending: false,
            },
            skip: 0,
            limit: None,
        }
    }
}

impl Query {
    /// Whether a task passes the filters.
    pub fn keeps(&self, t: &Summary) -> bool {
        (self.states.is_empty() || self.states.contains(&t.state))
            && self.domain.as_ref().is_none_or(|d| {
                t.domain
                    .parse::<Domain>()
                    .is_ok_and(|td| td.is_in_branch_of(d))
            })
            && self
                .taskee
                .as_ref()
                .is_none_or(|want| t.taskee.as_ref() == Some(want))
            && self
                .since
                .as_ref()
                .is_none_or(|since| t.last_time().is_some_and(|at| at >= since.as_str()))
    }

    /// Filters, sorts and pages `tasks`; also gives how many passed the
    /// filters before paging.
    pub fn apply(&self, tasks: Vec<Summary>) -> (Vec<Summary>, usize) {
        let mut kept: Vec<Summary> = tasks.into_iter().filter(|t| self.keeps(t)).collect();
        let total = kept.len();
        kept.sort_by(|a, b| self.compare(a, b));
        let page = kept
            .into_iter()
            .skip(self.skip)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect();
        (page, total)
    }

    /// The sort's order; tasks without the field's value go last either
    /// way, and the id breaks ties.
    pub fn compare(&self, a: &Summary, b: &Summary) -> Ordering {
        let dir = |o: Ordering| if self.sort.descending { o.reverse() } else { o };
        let by_option = |x: Option<&str>, y: Option<&str>| match (x, y) {
            (Some(x), Some(y)) => dir(x.cmp(y)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let primary = match self.sort.field {
            SortField::Created => by_option(a.created_at.as_deref(), b.created_at.as_deref()),
            SortField::Ended => by_option(a.ended_at.as_deref(), b.ended_at.as_deref()),
            SortField::Priority => dir(a.priority.cmp(&b.priority)),
            SortField::Id => dir(a.id.cmp(&b.id)),
        };
        primary.then_with(|| a.id.cmp(&b.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, state: ListState, domain: &str, created: Option<&str>, prio: i32) -> Summary {
        Summary {
            id: id.into(),
            state,
            domain: domain.into(),
            taskee: Some(format!("t-{id}")),
            attempts: 1,
            priority: prio,
            created_at: created.map(str::to_string),
            started_at: None,
            ended_at: None,
            error_kind: None,
            reason: None,
            flow: false,
            slurm: Vec::new(),
        }
    }

    fn ids(v: &[Summary]) -> Vec<&str> {
        v.iter().map(|t| t.id.as_str()).collect()
    }

    fn sample() -> Vec<Summary> {
        vec![
            task(
                "c",
                ListState::Failed,
                "org.example.sales",
                Some("2026-01-03"),
                5,
            ),
            task(
                "a",
                ListState::Completed,
                "org.example",
                Some("2026-01-01"),
                0,
            ),
            task("b", ListState::Queued, "org.other", None, 9),
            task("d", ListState::Failed, "orgx", Some("2026-01-02"), 1),
        ]
    }

    #[test]
    fn sort_fields_parse_with_a_minus_for_descending() {
        let s: Sort = "-priority".parse().unwrap();
        assert_eq!(s.field, SortField::Priority);
        assert!(s.descending);
        assert!("size".parse::<Sort>().is_err());
    }

    #[test]
    fn filters_combine_and_a_domain_matches_its_branch() {
        let q = Query {
            states: vec![ListState::Failed],
            domain: Some("org".parse().unwrap()),
            ..Query::default()
        };
        let (page, total) = q.apply(sample());
        assert_eq!(ids(&page), ["c"], "orgx is not in the branch of org");
        assert_eq!(total, 1);
        let q = Query {
            taskee: Some("t-b".into()),
            ..Query::default()
        };
        assert_eq!(ids(&q.apply(sample()).0), ["b"]);
        let q = Query {
            since: Some("2026-01-02".into()),
            ..Query::default()
        };
        assert_eq!(ids(&q.apply(sample()).0), ["d", "c"]);
    }

    #[test]
    fn sorting_puts_missing_values_last_and_pages_after_sorting() {
        let q = Query::default();
        assert_eq!(ids(&q.apply(sample()).0), ["a", "d", "c", "b"]);
        let q = Query {
            sort: "-created".parse().unwrap(),
            ..Query::default()
        };
        assert_eq!(ids(&q.apply(sample()).0), ["c", "d", "a", "b"]);
        let q = Query {
            sort: "-priority".parse().unwrap(),
            skip: 1,
            limit: Some(2),
            ..Query::default()
        };
        let (page, total) = q.apply(sample());
        assert_eq!(ids(&page), ["c", "d"]);
        assert_eq!(total, 4);
    }
}
