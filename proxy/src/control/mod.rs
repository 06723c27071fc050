//! The control plane: the rules in force and how they change (file, watcher, admin edits),
//! the checks of rules against the catalogs of legacy and new, the grants pgdual needs, and
//! what each client role may read on legacy.

pub mod catalog;
pub mod grants;
pub mod privileges;
pub mod rules_store;
