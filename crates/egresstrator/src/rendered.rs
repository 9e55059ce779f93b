//! A ruleset (or a template's output) rendered for a backend, with the hash that says whether
//! a namespace needs it loaded. A leaf: the appliers (`backend`, `helper`) load what is
//! rendered here, and nothing here loads anything.

use egresstrator_core::render::{self, iptables, nft};
use egresstrator_core::Ruleset;

/// Which firewall a ruleset is loaded into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Nft,
    Iptables,
    /// A template's own `iptables-restore` input, loaded as a whole (egresstrator 0.2's
    /// mechanism: the template owns the namespace's filter table).
    IptablesRestore,
}

/// A ruleset rendered for a backend, with the hash that says whether it changed.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub backend: Backend,
    pub hash: String,
    /// The text an operator would read: the nft script, or both iptables-restore inputs.
    pub text: String,
    /// The ruleset it was rendered from; None for a template's output.
    pub ruleset: Option<Ruleset>,
}

/// A template's output, to be loaded as it is with `backend` (`Nft`, or `IptablesRestore`).
pub fn render_template(backend: Backend, text: String) -> Rendered {
    Rendered {
        backend,
        hash: render::hash(&text),
        text,
        ruleset: None,
    }
}

/// What to load into a namespace, and what to report with it: the one plan type of the
/// agent (`agent::plan::decide`, its template path) and of `set` and `explain`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The compiled ruleset or the template's output, rendered for the applier's backend.
    pub rendered: Rendered,
    /// Why the real ruleset could not be built: the plan is deny-all then.
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// Deny-all, because of `why` (fail closed).
    pub fn deny_all(backend: Backend, why: String) -> Plan {
        Plan {
            rendered: render(backend, &Ruleset::deny_all()),
            error: Some(why),
            warnings: Vec::new(),
        }
    }

    /// A template's output, loaded with the backend its format names.
    pub fn template(backend: Backend, text: String) -> Plan {
        Plan {
            rendered: render_template(backend, text),
            error: None,
            warnings: Vec::new(),
        }
    }
}

/// A ruleset rendered for `backend`.
pub fn render(backend: Backend, ruleset: &Ruleset) -> Rendered {
    let text = match backend {
        Backend::Nft => nft::render(ruleset),
        // Rulesets never use the whole-table loader; only templates do.
        Backend::Iptables | Backend::IptablesRestore => {
            let s = iptables::render(ruleset, iptables::Jump::Missing);
            format!("{}{}", s.v4, s.v6)
        }
    };
    Rendered {
        backend,
        hash: render::hash(&text),
        text,
        ruleset: Some(ruleset.clone()),
    }
}
