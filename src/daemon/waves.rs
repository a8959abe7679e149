//! Rollout waves: which hosts go together, in which order.

use crate::model::{selector_matches, EnvFile, Host};

/// One wave: its name, its hosts (indices into the environment's hosts), how many at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    pub name: String,
    pub hosts: Vec<usize>,
    pub max_parallel: usize,
}

/// Splits hosts into waves: a host goes in the first wave that selects it; without a rollout
/// every host is in one wave. Empty waves are dropped.
pub fn plan_waves(settings: &EnvFile, hosts: &[Host], default_parallel: usize) -> Vec<WavePlan> {
    let Some(rollout) = &settings.rollout else {
        return vec![WavePlan {
            name: "all".into(),
            hosts: (0..hosts.len()).collect(),
            max_parallel: default_parallel,
        }];
    };
    let mut taken = vec![false; hosts.len()];
    let mut out = Vec::new();
    for w in &rollout.waves {
        let mut members = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            if !taken[i] && selector_matches(&w.selector, &h.labels) {
                taken[i] = true;
                members.push(i);
            }
        }
        if !members.is_empty() {
            out.push(WavePlan {
                name: w.name.clone(),
                hosts: members,
                max_parallel: w
                    .max_parallel
                    .map(|p| p as usize)
                    .unwrap_or(default_parallel)
                    .max(1),
            });
        }
    }
    // Validation refuses hosts in no wave; be safe anyway: they go last.
    let rest: Vec<usize> = (0..hosts.len()).filter(|i| !taken[*i]).collect();
    if !rest.is_empty() {
        out.push(WavePlan {
            name: "unassigned".into(),
            hosts: rest,
            max_parallel: default_parallel,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::yaml::Pos;
    use crate::model::{LabelMatch, Rollout, Wave};

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: None,
            become_: false,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vars: Default::default(),
            path: String::new(),
            pos: Pos::START,
        }
    }

    #[test]
    fn canary_first_then_rest() {
        let hosts = vec![
            host("a", &[("role", "web")]),
            host("b", &[("role", "web"), ("canary", "true")]),
            host("c", &[]),
        ];
        let settings = EnvFile {
            rollout: Some(Rollout {
                waves: vec![
                    Wave {
                        name: "canary".into(),
                        selector: [("canary".to_string(), LabelMatch::One("true".into()))].into(),
                        max_parallel: Some(1),
                    },
                    Wave {
                        name: "rest".into(),
                        selector: Default::default(),
                        max_parallel: None,
                    },
                ],
            }),
            ..EnvFile::default()
        };
        let w = plan_waves(&settings, &hosts, 5);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].name.as_str(), w[0].hosts.clone(), w[0].max_parallel),
            ("canary", vec![1], 1)
        );
        assert_eq!((w[1].hosts.clone(), w[1].max_parallel), (vec![0, 2], 5));
    }

    #[test]
    fn no_rollout_is_one_wave() {
        let hosts = vec![host("a", &[]), host("b", &[])];
        assert_eq!(
            plan_waves(&EnvFile::default(), &hosts, 3)[0].hosts,
            vec![0, 1]
        );
    }
}
