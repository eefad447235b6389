//! Fuzzing the suite parser (proptest): [`TINY`] with random edits (lines deleted, duplicated
//! or swapped, values replaced by odd ones, text cut or spliced) and random text give a
//! checked suite and a consistent plan, or an error naming the file; never a panic.
//! `make test` tries a few hundred inputs per property; `make fuzz` sets PROPTEST_CASES.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;

use gauntlet_suite::{Error, Plan, Suite};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{mnist_dir, TINY};

fn runner() -> TestRunner {
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

/// Values a user might write by mistake, of every TOML type.
const ODD_VALUES: &[&str] = &[
    "0",
    "-1",
    "1.5",
    "0.5",
    "nan",
    "inf",
    "-inf",
    "-0.0",
    "1e300",
    "18446744073709551615",
    "9223372036854775807",
    "\"\"",
    "\"inf\"",
    "\"x\"",
    "\"base\"",
    "\"fgsm-trained\"",
    "\"fgsm\"",
    "\"mlp\"",
    "\"cnn\"",
    "\"conv-maxout\"",
    "\"pgd\"",
    "\"a+b\"",
    "\"../x\"",
    "true",
    "[]",
    "[0.1, -0.2]",
    "[16, 0]",
    "[100000000000]",
    "{}",
    "{ kind = \"pgd\" }",
    "{ kind = \"lp\", p = 1, eps = 1e9 }",
    "{ absolute = -1 }",
];

#[derive(Clone, Debug)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replaces the value of the `k`-th `key = value` on a line.
    ReplaceValue(usize, usize, usize),
    Truncate(usize),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = || any::<usize>();
    // Mostly value changes, which keep the syntax and so reach the checks after parsing.
    prop_oneof![
        1 => i().prop_map(Edit::DeleteLine),
        1 => i().prop_map(Edit::DuplicateLine),
        1 => (i(), i()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        6 => (i(), 0usize..4, 0..ODD_VALUES.len())
            .prop_map(|(l, k, v)| Edit::ReplaceValue(l, k, v)),
        1 => i().prop_map(Edit::Truncate),
        1 => (i(), "[ -~\n\u{e9}\u{1F600}]{0,12}").prop_map(|(at, s)| Edit::Insert(at, s)),
    ]
}

/// Replaces the value after the `k`-th ` = ` of `line` (up to the next `,`, `}` or the end).
fn replace_value(line: &str, k: usize, value: &str) -> Option<String> {
    let (start, _) = line.match_indices(" = ").nth(k)?;
    let from = start + 3;
    let rest = &line[from..];
    let end = rest
        .char_indices()
        .scan(0i32, |depth, (i, c)| {
            match c {
                '[' | '{' => *depth += 1,
                ']' | '}' => *depth -= 1,
                _ => {}
            }
            Some((i, c, *depth))
        })
        .find(|&(_, c, depth)| depth < 0 || (depth == 0 && c == ','))
        .map_or(rest.len(), |(i, _, _)| i);
    // Keep the spaces before the terminator.
    let end = rest[..end].trim_end().len();
    Some(format!("{}{value}{}", &line[..from], &rest[end..]))
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::DuplicateLine(i) if !lines.is_empty() => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Edit::ReplaceValue(i, k, v) if !lines.is_empty() => {
                if let Some(new) = replace_value(&lines[i % n], *k, ODD_VALUES[*v]) {
                    lines[i % n] = new;
                }
            }
            Edit::Truncate(at) => {
                let joined = lines.join("\n");
                let mut at = at % (joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                lines = joined[..at].lines().map(str::to_string).collect();
            }
            Edit::Insert(at, s) => {
                let mut joined = lines.join("\n");
                let mut at = at % (joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                joined.insert_str(at, s);
                lines = joined.lines().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// Outcome counts: suites accepted, rejected as bad TOML/schema, rejected as invalid values.
#[derive(Default)]
struct Tally([Cell<usize>; 3]);

impl Tally {
    fn add(&self, res: &Result<Suite, Error>) {
        let i = match res {
            Ok(_) => 0,
            Err(Error::Toml { .. }) => 1,
            Err(_) => 2,
        };
        self.0[i].set(self.0[i].get() + 1);
    }

    fn print(&self, what: &str) {
        let [ok, toml, invalid] = [0, 1, 2].map(|i| self.0[i].get());
        eprintln!(
            "fuzz {what}: {} inputs, {ok} planned, {toml} rejected by the parser or schema, \
             {invalid} rejected as invalid",
            ok + toml + invalid
        );
    }
}

/// Parses, checks and plans `text`; on success checks the plan's invariants.
fn check(text: &str, tally: &Tally) -> Result<(), TestCaseError> {
    let path = Path::new("fuzzed.toml");
    let res = Suite::from_text(path, text, Some(&mnist_dir()));
    tally.add(&res);
    match res {
        Ok(suite) => {
            let plan = Plan::new(&suite);
            let ids: BTreeSet<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
            prop_assert_eq!(ids.len(), plan.jobs.len(), "job ids are unique");
            for (i, job) in plan.jobs.iter().enumerate() {
                prop_assert!(job.inputs.iter().all(|&k| k < i), "inputs come first");
            }
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.contains("fuzzed.toml"), "{}", message);
        }
    }
    Ok(())
}

#[test]
fn edited_suites_never_panic() {
    let tally = Tally::default();
    runner()
        .run(&vec(edit(), 1..5), |edits| {
            check(&apply(TINY, &edits), &tally)
        })
        .unwrap();
    tally.print("edited suites");
}

#[test]
fn random_text_never_panics() {
    let tally = Tally::default();
    let text = prop_oneof![
        "[ -~\n]{0,200}",
        "(name|seed|data|model|attack|eps|like|\\[\\[model\\]\\]|\\[eval\\]|=|\"|\\{|\\}|\\[|\\]|,|\n| |0|1\\.5|-)*",
    ];
    runner().run(&text, |text| check(&text, &tally)).unwrap();
    tally.print("random texts");
}

#[test]
fn the_edit_helpers_do_what_they_say() {
    assert_eq!(
        replace_value("a = { x = 1, y = [2, 3] }", 2, "9").as_deref(),
        Some("a = { x = 1, y = 9 }")
    );
    assert_eq!(replace_value("x = 1", 1, "9"), None);
    assert_eq!(apply("a\nb\nc", &[Edit::SwapLines(0, 2)]), "c\nb\na");
    assert_eq!(apply("a\nb", &[Edit::Truncate(1)]), "a");
}
