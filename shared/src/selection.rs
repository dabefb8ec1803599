//! What a query selects from a view, the same for both layers: which groups pass its filters,
//! the output group each folds into, and which measures it reads. The batch reader applies it
//! to view-file rows, the speed reader to Redis group members; both see a cell as "the value
//! of dimension `d`" and nothing else, so the rules live here once.

use crate::config::AggKind;
use crate::view::ViewPlan;

/// A query's filters, grouping and measures, by index into the view's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// (dimension index, accepted values): a cell passes when its value is one of them (a
    /// cell without a value passes no filter).
    pub filters: Vec<(usize, Vec<String>)>,
    /// Dimension indices of the output groups (empty: one total series).
    pub group_by: Vec<usize>,
    /// Measure indices of the view.
    pub measures: Vec<usize>,
}

impl Selection {
    /// Whether a cell passes every filter; `value(d)` is the cell's value of dimension `d`.
    pub fn passes<'a>(&self, value: impl Fn(usize) -> Option<&'a str>) -> bool {
        self.filters
            .iter()
            .all(|(d, accepted)| value(*d).is_some_and(|v| accepted.iter().any(|a| a == v)))
    }

    /// The output group a cell folds into: its values of the `group_by` dimensions.
    pub fn project<'a>(&self, value: impl Fn(usize) -> Option<&'a str>) -> Vec<Option<String>> {
        self.group_by
            .iter()
            .map(|d| value(*d).map(str::to_string))
            .collect()
    }

    /// The grouping set (bit mask of dimension indices) whose cells answer the selection:
    /// the grouped dimensions and the filtered ones.
    pub fn grouping_set(&self) -> i32 {
        self.group_by
            .iter()
            .chain(self.filters.iter().map(|(d, _)| d))
            .fold(0, |mask, d| mask | (1 << d))
    }

    /// Input fields of the selected measures of kind `agg`, once each (p50 and p95 of one
    /// field read one sketch), sorted.
    pub fn fields(&self, view: &ViewPlan, agg: AggKind) -> Vec<String> {
        let mut fields: Vec<String> = self
            .measures
            .iter()
            .filter_map(|m| view.measures.get(*m))
            .filter(|m| m.agg == agg)
            .filter_map(|m| m.field_name.clone())
            .collect();
        fields.sort();
        fields.dedup();
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell<'a>(values: &'a [Option<&'a str>]) -> impl Fn(usize) -> Option<&'a str> {
        move |d| values.get(d).copied().flatten()
    }

    #[test]
    fn a_cell_passes_when_every_filtered_value_is_accepted() {
        let s = Selection {
            filters: vec![(0, vec!["DE".into(), "FR".into()]), (1, vec!["web".into()])],
            ..Selection::default()
        };
        assert!(s.passes(cell(&[Some("FR"), Some("web")])));
        assert!(!s.passes(cell(&[Some("US"), Some("web")])));
        assert!(!s.passes(cell(&[Some("DE"), None])));
        assert!(Selection::default().passes(cell(&[None, None])));
    }

    #[test]
    fn cells_fold_into_their_grouped_values_and_pick_the_grouping_set() {
        let s = Selection {
            filters: vec![(2, vec!["x".into()])],
            group_by: vec![1, 0],
            measures: vec![],
        };
        assert_eq!(
            s.project(cell(&[Some("DE"), None, Some("x")])),
            vec![None, Some("DE".to_string())]
        );
        assert_eq!(s.grouping_set(), 0b111);
        assert_eq!(Selection::default().grouping_set(), 0);
    }
}
