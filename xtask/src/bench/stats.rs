//! Medians and min–max over rounds, and ratios between them.

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }

    /// `412 (398–455)`.
    pub fn show(&self, decimals: usize) -> String {
        if self.n == 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

pub fn show_opt(s: Option<Summary>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show(decimals))
}

pub fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

pub fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_gives_median_min_and_max() {
        let s = Summary::of(&[5.0, 1.0, 3.0, f64::NAN, 4.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 5));
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(Summary::of(&[7.0]).unwrap().show(0), "7");
        assert_eq!(even.show(1), "2.5 (1.0–4.0)");
    }

    #[test]
    fn ratios_need_a_positive_floor() {
        let floor = Summary::of(&[-5.0]);
        assert_eq!(ratio(Summary::of(&[10.0]), floor), None);
        assert_eq!(show_ratio(None), "–");
    }
}
