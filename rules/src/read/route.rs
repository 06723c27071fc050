//! Read routing: where one read goes, as a pure function of the read's plan, the rules
//! snapshot and the session's state.
//!
//! The choice is sticky: a read that pins its table's key lands in the same percentage bucket
//! for the same key value, and any other read in the bucket of its client connection, so that
//! raising a table's percentage only ever moves more keys (or connections) to the mode.

use crate::read::plan::{NotRoutable, ReadPlan};
use crate::read::privilege::Access;
use crate::ruleset::{ReadMode, RuleSet};

pub use super::bucket::{bucket, Bucket};

/// What the router needs to know of the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionView {
    /// Inside an explicit transaction block (legacy's ReadyForQuery said `T` or `E`).
    pub in_block: bool,
    /// The session committed a write that the mirror may not have applied yet.
    pub unmirrored_write: bool,
    /// The session changed settings (SET, RESET, ...) that new would not share.
    pub own_settings: bool,
    /// Whether the session's role may read, on legacy, everything this read touches
    /// ([`crate::read::privilege::access`]); new and shadow need `Allowed`.
    pub access: Access,
}

/// Where a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Legacy(Why),
    /// Legacy answers; new runs the same read off the critical path for comparison.
    Shadow,
    /// New answers; legacy on any failure.
    New,
}

/// Why a read stays on legacy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Every table it reads has read mode `legacy` (or 0 %).
    Rules,
    /// Outside the percentage ramp.
    Ramp,
    /// Inside a transaction block: its snapshot and locks are on legacy.
    Transaction,
    /// The session wrote and the mirror has not caught up yet (read-your-writes).
    OwnWrite,
    /// The session's settings differ from new's.
    Settings,
    /// The session's role lacks SELECT on a table or column the read touches.
    Privilege,
    /// The session's role's privileges are being looked up.
    PrivilegeUnchecked,
    /// A table the read touches has row-level security on legacy.
    RowSecurity,
    /// The session may have changed its role.
    Role,
    /// The statement cannot be answered by new; the label says why.
    Statement(&'static str),
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Rules => "rules",
            Why::Ramp => "ramp",
            Why::Transaction => "transaction",
            Why::OwnWrite => "own_write",
            Why::Settings => "settings",
            Why::Privilege => "privilege",
            Why::PrivilegeUnchecked => "privilege_unchecked",
            Why::RowSecurity => "rls",
            Why::Role => "role",
            Why::Statement(s) => s,
        }
    }
}

/// Routes one read. `plan` is the read's plan for the rules in `rules`; `stick` is the bucket
/// of the pinned key value when the plan has one, else of the connection.
pub fn route(
    plan: &Result<ReadPlan, NotRoutable>,
    rules: &RuleSet,
    session: SessionView,
    stick: u8,
) -> Route {
    let plan = match plan {
        Ok(p) => p,
        Err(NotRoutable::UnmappedTable(_)) | Err(NotRoutable::NoTable) => {
            return Route::Legacy(Why::Rules)
        }
        Err(e) => return Route::Legacy(Why::Statement(e.reason())),
    };
    // A join takes the least advanced mode and the smallest share of its tables.
    let mut mode = ReadMode::New;
    let mut percent = 100;
    let mut database = None;
    for t in &plan.tables {
        let Some(rule) = rules.table(t) else {
            return Route::Legacy(Why::Rules);
        };
        mode = mode.min(rule.read);
        percent = percent.min(rule.read_percent);
        if database.is_some_and(|d| d != rule.database) {
            return Route::Legacy(Why::Statement("mixed_databases"));
        }
        database = Some(rule.database);
    }
    if mode == ReadMode::Legacy || percent == 0 || plan.tables.is_empty() {
        return Route::Legacy(Why::Rules);
    }
    if stick >= percent {
        return Route::Legacy(Why::Ramp);
    }
    // Nothing runs on new, not even a shadow, that the role may not read on legacy.
    match session.access {
        Access::Allowed => {}
        Access::Unchecked => return Route::Legacy(Why::PrivilegeUnchecked),
        Access::Denied => return Route::Legacy(Why::Privilege),
        Access::RowSecurity => return Route::Legacy(Why::RowSecurity),
        Access::RoleChanged => return Route::Legacy(Why::Role),
    }
    if mode == ReadMode::Shadow {
        // Shadowing costs the client nothing: compare whatever legacy answers, except inside
        // blocks that wrote (new cannot see those writes, so every compare would differ).
        return if session.in_block {
            Route::Legacy(Why::Transaction)
        } else if session.unmirrored_write {
            Route::Legacy(Why::OwnWrite)
        } else {
            Route::Shadow
        };
    }
    if session.in_block {
        Route::Legacy(Why::Transaction)
    } else if session.unmirrored_write {
        Route::Legacy(Why::OwnWrite)
    } else if session.own_settings {
        Route::Legacy(Why::Settings)
    } else {
        Route::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::plan::plan_read;
    use crate::ruleset::parse_rules;

    fn rules(users: &str, orders: &str) -> RuleSet {
        parse_rules(
            &format!(
                r#"
                [[table]]
                legacy = "public.users"
                new = "app.customers"
                keys = ["id"]
                {users}
                [table.columns]
                customer_id = "id"
                email = "email"

                [[table]]
                legacy = "public.orders"
                new = "app.orders"
                keys = ["id"]
                {orders}
                [table.columns]
                id = "id"
                user_id = "user_id"
                "#
            ),
            "t",
        )
        .unwrap()
    }

    const IDLE: SessionView = SessionView {
        in_block: false,
        unmirrored_write: false,
        own_settings: false,
        access: Access::Allowed,
    };

    #[test]
    fn routing_table() {
        use Route::*;
        let block = SessionView {
            in_block: true,
            ..IDLE
        };
        let wrote = SessionView {
            unmirrored_write: true,
            ..IDLE
        };
        let set = SessionView {
            own_settings: true,
            ..IDLE
        };
        let with = |access| SessionView { access, ..IDLE };
        let (denied, unchecked, rls, role) = (
            with(Access::Denied),
            with(Access::Unchecked),
            with(Access::RowSecurity),
            with(Access::RoleChanged),
        );
        let join = "SELECT u.email FROM users u JOIN orders o ON o.user_id = u.id";
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, SessionView, u8, Route)] = &[
            // users rule, orders rule, sql, session, bucket, route
            ("", "", "SELECT email FROM users", IDLE, 0, Legacy(Why::Rules)),
            ("read = \"new\"", "", "SELECT email FROM users", IDLE, 0, New),
            ("read = \"new\"", "", "SELECT email FROM users", IDLE, 99, New),
            ("read = \"new\"\nread_percent = 30", "", "SELECT email FROM users", IDLE, 29, New),
            ("read = \"new\"\nread_percent = 30", "", "SELECT email FROM users", IDLE, 30, Legacy(Why::Ramp)),
            ("read = \"new\"\nread_percent = 0", "", "SELECT email FROM users", IDLE, 0, Legacy(Why::Rules)),
            ("read = \"shadow\"", "", "SELECT email FROM users", IDLE, 5, Shadow),
            ("read = \"shadow\"", "", "SELECT email FROM users", set, 5, Shadow),
            ("read = \"shadow\"", "", "SELECT email FROM users", block, 5, Legacy(Why::Transaction)),
            ("read = \"new\"", "", "SELECT email FROM users", block, 0, Legacy(Why::Transaction)),
            ("read = \"new\"", "", "SELECT email FROM users", wrote, 0, Legacy(Why::OwnWrite)),
            ("read = \"new\"", "", "SELECT email FROM users", set, 0, Legacy(Why::Settings)),
            ("read = \"new\"", "", "SELECT email FROM users FOR UPDATE", IDLE, 0, Legacy(Why::Statement("locking"))),
            ("read = \"new\"", "", "SELECT random(), email FROM users", IDLE, 0, Legacy(Why::Statement("function"))),
            ("read = \"new\"", "", "SELECT users.email FROM users JOIN payments p ON p.id = users.id", IDLE, 0, Legacy(Why::Rules)),
            ("read = \"new\"", "", "SELECT 1", IDLE, 0, Legacy(Why::Rules)),
            ("read = \"new\"", "", join, IDLE, 0, Legacy(Why::Rules)),
            ("read = \"new\"", "read = \"new\"", join, IDLE, 0, New),
            ("read = \"new\"", "read = \"shadow\"", join, IDLE, 0, Shadow),
            ("read = \"new\"", "read = \"new\"\nread_percent = 10", join, IDLE, 50, Legacy(Why::Ramp)),
            ("read = \"new\"", "", "SELECT email FROM users", denied, 0, Legacy(Why::Privilege)),
            ("read = \"shadow\"", "", "SELECT email FROM users", denied, 0, Legacy(Why::Privilege)),
            ("read = \"new\"", "", "SELECT email FROM users", unchecked, 0, Legacy(Why::PrivilegeUnchecked)),
            ("read = \"shadow\"", "", "SELECT email FROM users", unchecked, 0, Legacy(Why::PrivilegeUnchecked)),
            ("read = \"new\"", "", "SELECT email FROM users", rls, 0, Legacy(Why::RowSecurity)),
            ("read = \"shadow\"", "", "SELECT email FROM users", rls, 0, Legacy(Why::RowSecurity)),
            ("read = \"new\"", "", "SELECT email FROM users", role, 0, Legacy(Why::Role)),
            ("read = \"shadow\"", "", "SELECT email FROM users", role, 0, Legacy(Why::Role)),
            ("", "", "SELECT email FROM users", denied, 0, Legacy(Why::Rules)),
        ];
        for (i, (users, orders, sql, session, stick, want)) in cases.iter().enumerate() {
            let set = rules(users, orders);
            let plan = plan_read(sql, &set);
            assert_eq!(
                route(&plan, &set, *session, *stick),
                *want,
                "case {i}: {sql} with users {users:?}, orders {orders:?}"
            );
        }
    }
}
