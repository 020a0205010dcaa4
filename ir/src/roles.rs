//! What each projection weight of a model is for, as the frontend that
//! built the graph knows it: the passes select layers by role, never by
//! weight name. Roles live in the graph's `meta roles`, one
//! `weight=role` entry per tagged weight, comma-separated, so that they
//! travel with the textual IR.

use std::collections::BTreeMap;
use std::fmt;

use crate::graph::Graph;

/// The meta key that holds the roles.
pub const ROLES_META: &str = "roles";

/// The role of a projection weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Attention projections: queries, keys, values, output.
    Q,
    K,
    V,
    O,
    /// Feed-forward projections.
    Gate,
    Up,
    Down,
    /// The output projection to the vocabulary (lm_head).
    LmHead,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Q,
        Role::K,
        Role::V,
        Role::O,
        Role::Gate,
        Role::Up,
        Role::Down,
        Role::LmHead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Q => "q",
            Role::K => "k",
            Role::V => "v",
            Role::O => "o",
            Role::Gate => "gate",
            Role::Up => "up",
            Role::Down => "down",
            Role::LmHead => "lm_head",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// A linear layer inside the decoder blocks (not lm_head).
    pub fn in_block(self) -> bool {
        self != Role::LmHead
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `meta roles` value for `roles`.
pub fn encode(roles: &BTreeMap<String, Role>) -> String {
    roles
        .iter()
        .map(|(name, role)| format!("{name}={role}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The roles a graph's meta gives its weights (none without `meta roles`).
pub fn roles(graph: &Graph) -> Result<BTreeMap<String, Role>, String> {
    let Some(value) = graph.meta.get(ROLES_META) else {
        return Ok(BTreeMap::new());
    };
    value
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (name, role) = entry
                .rsplit_once('=')
                .ok_or_else(|| format!("meta roles: `{entry}` is not weight=role"))?;
            let role = Role::from_name(role)
                .ok_or_else(|| format!("meta roles: unknown role `{role}` of `{name}`"))?;
            Ok((name.to_string(), role))
        })
        .collect()
}
