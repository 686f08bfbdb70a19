//! The benchmark's equality check: every variant must produce exactly the rows of the
//! reference, row for row, before any timing is believed.

/// One metadata row: (process_instance_id, key, value).
pub type Row = (i64, String, Option<String>);

/// The first difference between two row lists sorted by (instance, key), or `None` when they
/// are equal row for row (same length, same rows, same values, NULL distinct from '').
pub fn first_difference(reference: &[Row], got: &[Row]) -> Option<String> {
    for (i, (want, have)) in reference.iter().zip(got).enumerate() {
        if want != have {
            return Some(format!("row {i}: expected {want:?}, got {have:?}"));
        }
    }
    match reference.len().cmp(&got.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "{} rows missing, the first {:?}",
            reference.len() - got.len(),
            reference[got.len()]
        )),
        std::cmp::Ordering::Less => Some(format!(
            "{} rows too many, the first {:?}",
            got.len() - reference.len(),
            got[reference.len()]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            (1, "customer_id".into(), Some("100001".into())),
            (1, "invoice_number".into(), Some("INV-1-2".into())),
            (1, "po_number".into(), None),
            (2, "customer_id".into(), Some("100002".into())),
        ]
    }

    #[test]
    fn equal_lists_have_no_difference() {
        assert_eq!(first_difference(&rows(), &rows()), None);
        assert_eq!(first_difference(&[], &[]), None);
    }

    #[test]
    fn every_kind_of_difference_is_found() {
        let reference = rows();
        let mut changed = rows();
        changed[1].2 = Some("INV-1-1".into());
        assert!(first_difference(&reference, &changed)
            .unwrap()
            .starts_with("row 1:"));

        let mut null_vs_empty = rows();
        null_vs_empty[2].2 = Some(String::new());
        assert!(first_difference(&reference, &null_vs_empty)
            .unwrap()
            .starts_with("row 2:"));

        let mut other_key = rows();
        other_key[3].1 = "invoice_number".into();
        assert!(first_difference(&reference, &other_key).is_some());

        let mut other_instance = rows();
        other_instance[0].0 = 3;
        assert!(first_difference(&reference, &other_instance).is_some());

        let missing = &reference[..3];
        assert_eq!(
            first_difference(&reference, missing).unwrap(),
            r#"1 rows missing, the first (2, "customer_id", Some("100002"))"#
        );

        let mut extra = rows();
        extra.push((2, "invoice_number".into(), Some("x".into())));
        assert!(first_difference(&reference, &extra)
            .unwrap()
            .starts_with("1 rows too many"));

        let mut duplicated = rows();
        duplicated.insert(1, duplicated[0].clone());
        assert!(first_difference(&reference, &duplicated).is_some());
    }
}
