//! Scenario files (TOML): the services with their slots, service times and downstream calls,
//! and the request classes with their entry point, objective and workload. Loading checks
//! that every name refers to something and that the call graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Priority levels the proxies know (unknown classes get the lowest, `levels - 1`).
    #[serde(default = "default_levels")]
    pub levels: u8,
    pub services: Vec<ServiceSpec>,
    pub classes: Vec<ClassSpec>,
}

fn default_levels() -> u8 {
    8
}

/// One service and its sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Requests the service handles at once; the rest wait in its sidecar's queue.
    #[serde(default = "default_slots")]
    pub slots: usize,
    pub service_time: ServiceTime,
    /// Calls made after the service's own work.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
    /// `sequence` (one after another) or `parallel` (all at once).
    #[serde(default)]
    pub mode: CallMode,
    /// Burn CPU for the service time instead of sleeping.
    #[serde(default)]
    pub spin: bool,
}

fn default_slots() -> usize {
    4
}

/// How a service issues its downstream calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallMode {
    #[default]
    Sequence,
    Parallel,
}

/// One downstream call, made with a probability.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    pub to: String,
    #[serde(default = "one")]
    pub probability: f64,
    /// Only for these classes (empty = all).
    #[serde(default)]
    pub classes: Vec<String>,
}

fn one() -> f64 {
    1.0
}

/// A service-time distribution (milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum ServiceTime {
    Constant {
        mean_ms: f64,
    },
    Exponential {
        mean_ms: f64,
    },
    /// Lognormal with this mean and shape `sigma` (of the underlying normal).
    Lognormal {
        mean_ms: f64,
        sigma: f64,
    },
}

impl ServiceTime {
    pub fn mean_ms(&self) -> f64 {
        match self {
            ServiceTime::Constant { mean_ms }
            | ServiceTime::Exponential { mean_ms }
            | ServiceTime::Lognormal { mean_ms, .. } => *mean_ms,
        }
    }

    /// Draws one service time in milliseconds.
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        match self {
            ServiceTime::Constant { mean_ms } => *mean_ms,
            ServiceTime::Exponential { mean_ms } => {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                -u.ln() * mean_ms
            }
            ServiceTime::Lognormal { mean_ms, sigma } => {
                let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let mu = mean_ms.max(1e-6).ln() - sigma * sigma / 2.0;
                (mu + sigma * z).exp()
            }
        }
    }
}

/// A request class: where it enters, what it must meet and how it is offered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub name: String,
    /// The service the class's requests enter at.
    pub entry: String,
    #[serde(default = "default_path")]
    pub path: String,
    pub objective: ObjectiveSpec,
    pub workload: Workload,
    /// The class is the background load (started as the burst in experiments).
    #[serde(default)]
    pub background: bool,
}

fn default_path() -> String {
    "/".into()
}

/// The body of `PUT /api/v1/classes/{class}/objective`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSpec {
    pub quantile: f64,
    pub latency_ms: f64,
    pub importance: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
}

/// How requests of a class are offered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    /// Poisson arrivals at `rps`, optionally ramping linearly to `ramp_to_rps`.
    Open {
        rps: f64,
        #[serde(default)]
        ramp_to_rps: Option<f64>,
    },
    /// `concurrency` clients each sending the next request when the last one answers.
    Closed {
        concurrency: usize,
        #[serde(default)]
        think_ms: f64,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text)
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// The Bookinfo scenario shipped with the crate.
    pub fn bookinfo() -> Scenario {
        Scenario::parse(include_str!("../scenarios/bookinfo.toml"))
            .unwrap_or_else(|e| panic!("the shipped bookinfo scenario is invalid: {e}"))
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn class(&self, name: &str) -> Option<&ClassSpec> {
        self.classes.iter().find(|c| c.name == name)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.levels == 0 {
            return bad("levels must be at least 1".into());
        }
        let names: BTreeSet<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        if names.len() != self.services.len() {
            return bad("service names must be unique".into());
        }
        for s in &self.services {
            if s.service_time.mean_ms() < 0.0 {
                return bad(format!("{}: negative service time", s.name));
            }
            for c in &s.calls {
                if !names.contains(c.to.as_str()) {
                    return bad(format!("{} calls unknown service {}", s.name, c.to));
                }
                if !(0.0..=1.0).contains(&c.probability) {
                    return bad(format!("{} -> {}: probability not in [0, 1]", s.name, c.to));
                }
            }
        }
        for c in &self.classes {
            if !names.contains(c.entry.as_str()) {
                return bad(format!("class {} enters at unknown {}", c.name, c.entry));
            }
        }
        self.check_acyclic()
    }

    fn check_acyclic(&self) -> Result<(), ScenarioError> {
        let edges: BTreeMap<&str, Vec<&str>> = self
            .services
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.calls.iter().map(|c| c.to.as_str()).collect(),
                )
            })
            .collect();
        fn visit<'a>(
            n: &'a str,
            edges: &BTreeMap<&'a str, Vec<&'a str>>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), ScenarioError> {
            if path.contains(&n) {
                return Err(ScenarioError::Invalid(format!("call cycle through {n}")));
            }
            path.push(n);
            for m in edges.get(n).into_iter().flatten() {
                visit(m, edges, path)?;
            }
            path.pop();
            Ok(())
        }
        for s in &self.services {
            visit(&s.name, &edges, &mut Vec::new())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shipped_scenarios_parse() {
        for text in [
            include_str!("../scenarios/bookinfo.toml"),
            include_str!("../scenarios/boutique.toml"),
            include_str!("../scenarios/trainticket.toml"),
        ] {
            let s = Scenario::parse(text).unwrap();
            assert!(s.classes.iter().any(|c| c.name == "interactive"));
            assert!(s.classes.iter().any(|c| c.name == "batch"));
        }
    }

    #[test]
    fn rejects_cycles_and_unknown_services() {
        let base = r#"
name = "x"
[[services]]
name = "a"
service_time = { dist = "constant", mean_ms = 1.0 }
calls = [{ to = "b" }]
[[services]]
name = "b"
service_time = { dist = "constant", mean_ms = 1.0 }
calls = [{ to = "CALLEE" }]
[[classes]]
name = "c"
entry = "a"
objective = { quantile = 0.99, latency_ms = 10.0, importance = 1.0 }
workload = { kind = "open", rps = 1.0 }
"#;
        let cyc = Scenario::parse(&base.replace("CALLEE", "a")).unwrap_err();
        assert!(cyc.to_string().contains("cycle"), "{cyc}");
        let unknown = Scenario::parse(&base.replace("CALLEE", "zz")).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown service zz"),
            "{unknown}"
        );
    }

    #[test]
    fn distributions_have_their_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for d in [
            ServiceTime::Exponential { mean_ms: 10.0 },
            ServiceTime::Lognormal {
                mean_ms: 10.0,
                sigma: 0.5,
            },
        ] {
            let n = 50_000;
            let mean = (0..n).map(|_| d.sample(&mut rng)).sum::<f64>() / n as f64;
            assert!((9.5..10.5).contains(&mean), "{d:?}: {mean}");
        }
    }
}
