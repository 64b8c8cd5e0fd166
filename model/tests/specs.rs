//! specs/parking.md and the checker name the same properties, with the same expectations.

use std::collections::BTreeMap;

use pushpark_model::checker::{ParkModel, LIVENESS, SAFETY, SOMETIMES};
use stateright::{Expectation, Model};

const SPEC: &str = include_str!("../../specs/parking.md");

/// The property names listed under each `###` heading of the spec's `## Properties`.
fn spec_properties() -> BTreeMap<String, Vec<String>> {
    let section = SPEC
        .split("\n## ")
        .find(|s| s.starts_with("Properties"))
        .expect("specs/parking.md has a `## Properties` section");
    let mut by_heading: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut heading = String::new();
    for line in section.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("- `") {
            let name = rest.split('`').next().unwrap_or_default();
            by_heading
                .entry(heading.clone())
                .or_default()
                .push(name.to_owned());
        }
    }
    by_heading
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn spec_and_checker_name_the_same_properties() {
    let spec = spec_properties();
    assert_eq!(spec.get("Safety (always)"), Some(&names(&SAFETY)));
    assert_eq!(spec.get("Liveness (eventually)"), Some(&names(&LIVENESS)));
    assert_eq!(
        spec.get("Reachability (sometimes)"),
        Some(&names(&SOMETIMES))
    );
    assert_eq!(spec.len(), 3, "unexpected headings: {:?}", spec.keys());
}

#[test]
fn checker_properties_have_the_expectation_the_spec_gives_them() {
    let model = ParkModel::new(1, 1);
    let expected = [
        (Expectation::Always, &SAFETY[..]),
        (Expectation::Eventually, &LIVENESS[..]),
        (Expectation::Sometimes, &SOMETIMES[..]),
    ];
    let checked: Vec<(String, String)> = model
        .properties()
        .iter()
        .map(|p| (format!("{:?}", p.expectation), p.name.to_owned()))
        .collect();
    let listed: Vec<(String, String)> = expected
        .iter()
        .flat_map(|(e, names)| names.iter().map(move |n| (format!("{e:?}"), n.to_string())))
        .collect();
    assert_eq!(checked, listed);
}
