//! Conversion from `meshtrace-budget`'s [`meshtrace_budget::AssignmentSet`] to the wire
//! messages of [`crate::priorities::v1`]. Absent header or baggage rules become empty strings.

use crate::priorities::v1 as pb;

impl From<&meshtrace_budget::Signature> for pb::Signature {
    fn from(s: &meshtrace_budget::Signature) -> Self {
        pb::Signature {
            caller: s.caller.clone(),
            operation: s.operation.clone(),
            share: s.share,
        }
    }
}

impl From<&meshtrace_budget::MatchRule> for pb::MatchRule {
    fn from(m: &meshtrace_budget::MatchRule) -> Self {
        let (header_name, header_value) = m.header.clone().unwrap_or_default();
        let (baggage_key, baggage_value) = m.baggage.clone().unwrap_or_default();
        pb::MatchRule {
            header_name,
            header_value,
            baggage_key,
            baggage_value,
            signatures: m.signatures.iter().map(Into::into).collect(),
        }
    }
}

impl From<&meshtrace_budget::Assignment> for pb::Assignment {
    fn from(a: &meshtrace_budget::Assignment) -> Self {
        pb::Assignment {
            class: a.class.clone(),
            priority: u32::from(a.priority),
            timeout_ms: a.timeout_ms,
            r#match: Some((&a.r#match).into()),
            reason: a.reason.clone(),
            min_share: a.min_share,
        }
    }
}

impl From<&meshtrace_budget::AssignmentSet> for pb::AssignmentSet {
    fn from(s: &meshtrace_budget::AssignmentSet) -> Self {
        pb::AssignmentSet {
            version: s.version,
            service: s.service.clone(),
            generated_at: s.generated_at_ns,
            assignments: s.assignments.iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtrace_budget::{Assignment, AssignmentSet, MatchRule, Signature};

    #[test]
    fn converts_every_field() {
        let set = AssignmentSet {
            version: 7,
            service: "db".into(),
            generated_at_ns: 42,
            assignments: vec![Assignment {
                class: "batch".into(),
                priority: 3,
                timeout_ms: 12.5,
                r#match: MatchRule {
                    header: Some(("x-mesh-class".into(), "batch".into())),
                    baggage: None,
                    signatures: vec![Signature {
                        caller: "cron".into(),
                        operation: "scan".into(),
                        share: 0.9,
                    }],
                },
                reason: "operator override".into(),
                min_share: Some(0.2),
            }],
        };
        let pb: pb::AssignmentSet = (&set).into();
        assert_eq!(
            (pb.version, pb.service.as_str(), pb.generated_at),
            (7, "db", 42)
        );
        let a = &pb.assignments[0];
        assert_eq!(
            (a.class.as_str(), a.priority, a.timeout_ms),
            ("batch", 3, 12.5)
        );
        assert_eq!(
            (a.reason.as_str(), a.min_share),
            ("operator override", Some(0.2))
        );
        let m = a.r#match.as_ref().unwrap();
        assert_eq!(
            (m.header_name.as_str(), m.header_value.as_str()),
            ("x-mesh-class", "batch")
        );
        assert_eq!((m.baggage_key.as_str(), m.baggage_value.as_str()), ("", ""));
        assert_eq!(
            m.signatures,
            vec![pb::Signature {
                caller: "cron".into(),
                operation: "scan".into(),
                share: 0.9
            }]
        );
    }
}
