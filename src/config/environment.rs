//! The `CRADLE_*` variables of the environment: a near miss of a setting's name refuses the
//! start (a misspelled `CRADLE_HTTP_LISTN` would otherwise be ignored without a word, and
//! Cradle would start on the default), as an unknown key of the TOML file does.

use super::ConfigError;

/// `CRADLE_*` variables read by Cradle's other tools, or prefixes of them (ending in `_`):
/// they are not settings of `cradle serve` and pass the check.
pub const OTHER_VARIABLES: &[&str] = &[
    "CRADLE_CONFIG",
    "CRADLE_CREATE_STORE",
    "CRADLE_MONITOR_",
    "CRADLE_REQUIRE_",
    "CRADLE_FUZZ_",
    "CRADLE_TEST_",
    "CRADLE_CHROMIUM",
    "CRADLE_JS_CLIENT",
    "CRADLE_BENCH_",
];

/// Edits (insert, delete, replace) between `a` and `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The section prefix of a setting's variable: `CRADLE_HTTP_` of `CRADLE_HTTP_LISTEN`.
fn section(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("CRADLE_")?;
    let end = rest.find('_')?;
    Some(&name[.."CRADLE_".len() + end + 1])
}

/// Refuses the first variable of `vars` (names) that is a near miss of one of `known`: one
/// or two edits away, or an unknown key under a known section (`CRADLE_HTTP_…`), naming the
/// nearest known variable. Known names, [`OTHER_VARIABLES`] and names far from every setting
/// pass.
pub fn check<'a>(
    known: &[&str],
    vars: impl IntoIterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    for var in vars {
        if !var.starts_with("CRADLE_") || known.contains(&var) {
            continue;
        }
        let other = OTHER_VARIABLES.iter().any(|o| match o.ends_with('_') {
            true => var.starts_with(o),
            false => var == *o,
        });
        if other {
            continue;
        }
        let Some((nearest, edits)) = known
            .iter()
            .map(|k| (*k, distance(var, k)))
            .min_by_key(|(_, d)| *d)
        else {
            continue;
        };
        let same_section = section(var).is_some_and(|s| known.iter().any(|k| k.starts_with(s)));
        if edits <= 2 || same_section {
            return Err(ConfigError::Invalid {
                key: "environment",
                message: format!(
                    "{var} is not a setting of Cradle; did you mean {nearest}? (other tools' variables: {})",
                    OTHER_VARIABLES.join(", ")
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["CRADLE_HTTP_LISTEN", "CRADLE_MQTT_LISTEN", "CRADLE_LOG"];

    #[test]
    fn a_misspelled_setting_is_refused_naming_the_nearest_one() {
        let err = check(KNOWN, ["CRADLE_HTTP_LISTN"]).unwrap_err().to_string();
        assert!(
            err.contains("CRADLE_HTTP_LISTN") && err.contains("CRADLE_HTTP_LISTEN"),
            "{err}"
        );
        let err = check(KNOWN, ["CRADLE_LGO"]).unwrap_err().to_string();
        assert!(err.contains("CRADLE_LOG"), "{err}");
    }

    #[test]
    fn an_unknown_key_under_a_known_section_is_refused() {
        let err = check(KNOWN, ["CRADLE_HTTP_PORT"]).unwrap_err().to_string();
        assert!(err.contains("CRADLE_HTTP_LISTEN"), "{err}");
    }

    #[test]
    fn known_names_other_tools_and_unrelated_names_pass() {
        assert!(check(
            KNOWN,
            [
                "CRADLE_HTTP_LISTEN",
                "CRADLE_REQUIRE_POSTGRES",
                "CRADLE_FUZZ_SEED",
                "CRADLE_MONITOR_TOKEN",
                "CRADLE_CONFIG",
                "CRADLE_SOMETHING_ELSE_ENTIRELY",
                "PATH",
            ]
        )
        .is_ok());
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("CRADLE_LOG", "CRADLE_LOG"), 0);
        assert_eq!(distance("CRADLE_LGO", "CRADLE_LOG"), 2);
        assert_eq!(distance("LISTN", "LISTEN"), 1);
    }
}
