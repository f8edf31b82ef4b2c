//! Topics and patterns as NATS subjects.
//!
//! Topics map 1:1 to subjects (both are dot-separated). In patterns `*` stays `*` and `#`
//! becomes `>`. NATS has no "zero or more" wildcard: `>` matches *one* or more segments, so
//! `a.#` (which matches `a` itself) needs two subjects, `a` and `a.>`, and `a.#.b` (a `#` in
//! the middle) has no NATS form at all. Where one subject is needed (a consumer filter on
//! NATS 2.9 takes exactly one), the pattern is *widened* to the narrowest subject that covers
//! it and the transport checks every message against the pattern itself.

use switchyard_core::{Pattern, Topic};

/// How a pattern is expressed in subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subjects {
    /// Subjects that together match exactly the pattern's topics, when `exact`; else the one
    /// widened subject (a superset).
    pub list: Vec<String>,
    /// One subject covering every topic the pattern matches (maybe more).
    pub widened: String,
    /// `list` matches exactly the pattern's topics.
    pub exact: bool,
}

/// The subject a topic is published on. Fails for a topic NATS cannot publish to (a `>`
/// segment).
pub(crate) fn topic_subject(topic: &Topic) -> Result<&str, &'static str> {
    if topic.segments().any(|s| s == ">") {
        return Err("a `>` segment is a wildcard in NATS and cannot be published to");
    }
    Ok(topic.as_str())
}

fn join(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| if *s == "#" { ">" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

/// Translates a pattern.
pub(crate) fn pattern_subjects(pattern: &Pattern) -> Subjects {
    let segs: Vec<&str> = pattern.segments().collect();
    let Some(first_hash) = segs.iter().position(|s| *s == "#") else {
        let s = join(&segs);
        return Subjects {
            list: vec![s.clone()],
            widened: s,
            exact: true,
        };
    };
    let head = &segs[..first_hash];
    let tail = &segs[first_hash + 1..];
    // Does the pattern need at least one segment after the head?
    let needs_more = tail.iter().any(|s| *s != "#");
    let widened = if head.is_empty() {
        ">".to_owned()
    } else if needs_more {
        format!("{}.>", join(head))
    } else if head.len() >= 2 {
        format!("{}.>", join(&head[..head.len() - 1]))
    } else {
        ">".to_owned()
    };
    if tail.is_empty() {
        // `head.#`: exactly `head` and `head.>` (or `>` alone for `#`).
        if head.is_empty() {
            return Subjects {
                list: vec![">".to_owned()],
                widened,
                exact: true,
            };
        }
        let h = join(head);
        return Subjects {
            list: vec![h.clone(), format!("{h}.>")],
            widened,
            exact: true,
        };
    }
    Subjects {
        list: vec![widened.clone()],
        widened,
        exact: false,
    }
}

/// True when some topic could match both patterns ([`Pattern::overlaps`]).
pub(crate) fn overlap(p: &Pattern, q: &Pattern) -> bool {
    p.overlaps(q)
}

/// True when every subject matching NATS subject `a` also matches `b`.
pub(crate) fn subject_subset(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for (i, tb) in b.iter().enumerate() {
        if *tb == ">" {
            // `>` needs at least one token of `a` here.
            return a.len() > i;
        }
        let Some(ta) = a.get(i) else { return false };
        if *ta == ">" {
            return false;
        }
        if *tb != "*" && ta != tb {
            return false;
        }
    }
    a.len() == b.len()
}

/// A name usable as a JetStream consumer or stream name: letters, digits, `-` and `_`;
/// anything else becomes `_`.
pub(crate) fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn translation() {
        assert_eq!(pattern_subjects(&p("a.*.c")).list, vec!["a.*.c"]);
        let s = pattern_subjects(&p("a.#"));
        assert_eq!(s.list, vec!["a", "a.>"]);
        assert!(s.exact);
        assert_eq!(s.widened, ">");
        assert_eq!(pattern_subjects(&p("x.a.#")).widened, "x.>");
        assert_eq!(pattern_subjects(&p("#")).list, vec![">"]);
        let mid = pattern_subjects(&p("a.#.b"));
        assert!(!mid.exact);
        assert_eq!(mid.list, vec!["a.>"]);
        assert_eq!(pattern_subjects(&p("#.x")).widened, ">");
        assert_eq!(pattern_subjects(&p("*.#.x")).widened, "*.>");
    }

    #[test]
    fn subsets() {
        assert!(subject_subset("a.b", "a.>"));
        assert!(subject_subset("a.*.c", "a.>"));
        assert!(!subject_subset("a", "a.>"));
        assert!(!subject_subset("*.x", "t.>"));
        assert!(subject_subset("a.b", "a.*"));
        assert!(!subject_subset("a.>", "a.*"));
        assert!(subject_subset("a.>", "a.>"));
    }

    #[test]
    fn overlaps() {
        assert!(overlap(&p("a.#"), &p("a")));
        assert!(overlap(&p("a.*"), &p("*.b")));
        assert!(!overlap(&p("a.*"), &p("b.#")));
        assert!(overlap(&p("#"), &p("x.y")));
        assert!(overlap(&p("t1.#"), &p("t1.w.#")));
        assert!(!overlap(&p("t1.#"), &p("t2.#")));
        assert!(!overlap(&p("a.b"), &p("a")));
    }
}
