//! Where a client's read goes, decided before its bytes are forwarded, and only when some
//! table's reads are routed. Requests that are not a lone read group, or arrive while legacy
//! still owes an answer, go to legacy untouched.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgdual_rules::privilege::Access;
use pgdual_rules::read_plan::KeyRef;
use pgdual_rules::route::{bucket, route, Route, SessionView};
use pgdual_rules::sql::ident::DEFAULT_SCHEMA;
use pgdual_rules::{Analysis, ReadPlan, RuleSet, StatementKind, TableName};

use crate::control::rules_store::RulesSnapshot;
use crate::proto::codec::frames;
use crate::proto::frontend;
use crate::reads::{self, CachedPlan, Describe, Request, ShadowJob};
use crate::session::state::{Prepared, Session, TxStatus};
use crate::session::Context;

/// A read group: its length, the request, the routed tables it reads, and the named
/// statement a Bind uses.
type ReadGroup = (usize, Request, Vec<TableName>, Option<Arc<Prepared>>);

/// The first request group of `buf` when it is a read of tables whose reads are routed: a
/// simple Query, or Bind, optional Describe of that portal, Execute (all rows) and Sync.
/// Returns the group's length, the request and those tables. The analysis comes from the
/// cache by fingerprint, or from the prepared statement itself, before anything is copied.
fn read_group(buf: &[u8], s: &Session, ctx: &Context, rules: &RuleSet) -> Option<ReadGroup> {
    let mut it = frames(buf, 0, buf.len());
    let (at, tag, len) = it.next()?;
    let body = &buf[at + 5..at + len];
    match tag {
        b'Q' => {
            let sql = std::str::from_utf8(frontend::query(body)?).ok()?;
            let routed = routed_tables(&ctx.cache.get(sql), rules)?;
            Some((
                at + len,
                Request::Simple {
                    sql: sql.into(),
                    lifted: None,
                },
                routed,
                None,
            ))
        }
        b'P' => {
            // Parse of the unnamed statement, then Bind of it, in one batch (libpq's
            // PQexecParams, pgbench -M extended, JDBC and node-postgres one-shot queries).
            // New validates the statement (the plan checked its names and the role's
            // privileges against legacy's catalog); legacy's unnamed statement catches up only
            // if the client uses it again without parsing it (see `Session::held_unnamed`).
            let (name, sql) = frontend::parse(body)?;
            if !name.is_empty() {
                return None;
            }
            let sql: Arc<str> = std::str::from_utf8(sql).ok()?.into();
            let param_types = frontend::parse_declared_types(body);
            let routed = routed_tables(&ctx.cache.get(&sql), rules)?;
            let (at, tag, len) = it.next()?;
            if tag != b'B' {
                return None;
            }
            let (end, bind_rest, describe) = bind_group(buf, &mut it, at, len, b"")?;
            Some((
                end,
                Request::Extended {
                    sql,
                    param_types,
                    bind_rest,
                    describe,
                    parse: true,
                },
                routed,
                None,
            ))
        }
        b'B' => {
            let (_, stmt) = frontend::bind(body)?;
            let prepared = s.confirmed(stmt)?;
            let analysis = prepared
                .analysis
                .get_or_init(|| ctx.cache.get(&prepared.sql));
            let routed = routed_tables(analysis, rules)?;
            let (end, bind_rest, describe) = bind_group(buf, &mut it, at, len, stmt)?;
            Some((
                end,
                Request::Extended {
                    sql: prepared.sql.clone(),
                    param_types: prepared.param_types.clone(),
                    bind_rest,
                    describe,
                    parse: false,
                },
                routed,
                Some(prepared.clone()),
            ))
        }
        _ => None,
    }
}

/// The Bind at `buf[at..at + len]` (of statement `stmt`), an optional Describe of its
/// portal, an Execute of all its rows and Sync: the group's end, the Bind's body after the
/// names, and what is described (the portal, or `stmt` when `statement_describe`).
fn bind_group(
    buf: &[u8],
    it: &mut impl Iterator<Item = (usize, u8, usize)>,
    at: usize,
    len: usize,
    stmt: &[u8],
) -> Option<(usize, Bytes, Describe)> {
    let body = &buf[at + 5..at + len];
    let (portal, bound) = frontend::bind(body)?;
    if bound != stmt {
        return None;
    }
    let bind_rest = frontend::bind_rest(&Bytes::copy_from_slice(body))?;
    let (mut at, mut tag, mut len) = it.next()?;
    let mut describe = Describe::None;
    if tag == b'D' {
        describe = match frontend::target(&buf[at + 5..at + len])? {
            (b'P', p) if p == portal => Describe::Portal,
            (b'S', s) if s == stmt => Describe::Statement,
            _ => return None,
        };
        (at, tag, len) = it.next()?;
    }
    let exec = &buf[at + 5..at + len];
    if tag != b'E' || frontend::execute(exec)? != portal {
        return None;
    }
    // Only an Execute of all rows: a row limit leaves a portal open on legacy.
    if exec.get(portal.len() + 1..portal.len() + 5)? != [0, 0, 0, 0] {
        return None;
    }
    let (at, tag, len) = it.next()?;
    (tag == b'S').then_some((at + len, bind_rest, describe))
}

/// When the analysis is of one read statement touching tables whose reads are routed,
/// those tables.
fn routed_tables(analysis: &Analysis, rules: &RuleSet) -> Option<Vec<TableName>> {
    let [one] = &analysis.statements[..] else {
        return None;
    };
    if one.kind != StatementKind::Read {
        return None;
    }
    let routed: Vec<TableName> = one
        .tables
        .iter()
        .filter_map(|t| t.resolve(DEFAULT_SCHEMA))
        .filter(|t| {
            rules
                .table(t)
                .is_some_and(|r| r.read != pgdual_rules::ReadMode::Legacy)
        })
        .collect();
    (!routed.is_empty()).then_some(routed)
}

/// Who legacy runs the session's statements as, for the privilege check of a read.
struct Who {
    role: Option<Arc<str>>,
    superuser: bool,
    role_changed: bool,
}

impl Who {
    fn of(s: &Session) -> Who {
        Who {
            role: s.role.clone(),
            superuser: s.superuser,
            role_changed: s.role_changed,
        }
    }

    /// Whether new (or a shadow) may answer `plan` for this session. Legacy exempts a
    /// superuser from privileges and row-level security; any other role needs its
    /// privileges on legacy, from the cache (a miss stays on legacy and fills it).
    fn access(&self, ctx: &Context, version: u64, plan: &ReadPlan) -> Access {
        if self.role_changed {
            return Access::RoleChanged;
        }
        match &self.role {
            None => Access::RoleChanged,
            Some(_) if self.superuser => Access::Allowed,
            Some(role) => ctx.privileges.access(role, version, plan),
        }
    }
}

/// A read group that may be routed, with what the decision needs of the session.
struct Pending {
    end: usize,
    request: Request,
    /// The named statement a Bind uses, which keeps its plan.
    statement: Option<Arc<Prepared>>,
    routed: Vec<TableName>,
    view: SessionView,
    settings: reads::Settings,
    conn_seed: u64,
    who: Who,
}

fn pending(buf: &[u8], s: &Session, ctx: &Context, rules: &RuleSet) -> Option<Pending> {
    // Only between batches (a Sync legacy needs must reach it), and only for UTF-8
    // sessions: the statement text is handed to new as UTF-8.
    if !s.reads_routable || s.busy() || s.unsynced || !s.utf8() {
        return None;
    }
    let (end, request, routed, statement) = read_group(buf, s, ctx, rules)?;
    Some(Pending {
        end,
        request,
        statement,
        routed,
        view: SessionView {
            in_block: s.tx != TxStatus::Idle,
            unmirrored_write: ctx.watermark.unmirrored(s.last_write_done),
            own_settings: s.own_settings,
            access: Access::Unchecked,
        },
        settings: s.settings.clone(),
        conn_seed: s.id,
        who: Who::of(s),
    })
}

/// Routes the group at the head of `buf`. When new answered, returns the group's length and
/// the answer for the client; otherwise the group goes to legacy (for a shadowed read, with
/// its answer captured for comparison).
pub async fn route_group(
    buf: &[u8],
    session: &RefCell<Session>,
    ctx: &Arc<Context>,
) -> Option<(usize, BytesMut)> {
    let snap = ctx.rules.load();
    if !snap.rules.routes_reads() {
        return None;
    }
    let Pending {
        end,
        mut request,
        statement,
        routed,
        mut view,
        settings,
        conn_seed,
        who,
    } = pending(buf, &session.borrow(), ctx, &snap.rules)?;
    let plan = plan_request(&ctx.reads, &snap, &mut request, statement.as_deref());
    let stick = sticky_bucket(&plan, &snap.rules, &request, conn_seed);
    if let Ok(p) = plan.as_ref() {
        view.access = who.access(ctx, snap.version, p);
    }
    let decision = route(&plan, &snap.rules, view, stick);
    let Ok(p) = plan.as_ref() else {
        // A read of routed tables that new cannot answer: legacy's, and counted so.
        ctx.reads.count_tables(&routed, |t| {
            t.legacy.inc();
        });
        return None;
    };
    let reads = &ctx.reads;
    match decision {
        Route::Legacy(why) => {
            tracing::trace!(reason = why.as_str(), "read stays on legacy");
            let kept = reads::KeptForRole::of(why);
            reads.count(p, |t| {
                t.legacy.inc();
                if let Some(k) = kept {
                    t.kept_for_role[k as usize].inc();
                }
            });
            None
        }
        Route::Shadow => {
            reads.count(p, |t| {
                t.shadow.inc();
            });
            session.borrow_mut().shadow = Some(Box::new(ShadowJob {
                plan: plan.clone(),
                rules: snap.rules.clone(),
                request,
                settings,
                capture: Default::default(),
            }));
            None
        }
        Route::New => {
            let answer = answer_on_new(ctx, &snap.rules, p, &request, &settings).await?;
            if let Request::Extended {
                sql,
                param_types,
                parse: true,
                ..
            } = &request
            {
                session.borrow_mut().held_unnamed =
                    Some(frontend::parse_frame("", sql, param_types).freeze());
            }
            Some((end, answer))
        }
    }
}

/// The plan of a request: a simple query's by its shape (its literals lifted into
/// `request`), a named statement's kept with the statement, an unnamed one's by text.
fn plan_request(
    reads: &reads::Reads,
    snap: &RulesSnapshot,
    request: &mut Request,
    statement: Option<&Prepared>,
) -> CachedPlan {
    match request {
        Request::Simple { sql, lifted } => {
            let (plan, values) = reads.plan_simple(snap, sql);
            *lifted = values;
            plan
        }
        Request::Extended { sql, .. } => match statement {
            Some(s) => s.plan_for(snap.generation, || reads.plan(snap, sql)),
            None => reads.plan(snap, sql),
        },
    }
}

/// The ramp bucket of a read; it matters (and is computed) only when some table the plan
/// reads is ramped below 100 %.
fn sticky_bucket(plan: &CachedPlan, rules: &RuleSet, request: &Request, conn_seed: u64) -> u8 {
    let ramped = plan.as_ref().as_ref().is_ok_and(|p| {
        p.tables
            .iter()
            .any(|t| rules.table(t).is_some_and(|r| r.read_percent < 100))
    });
    if ramped {
        stickiness(plan, request, conn_seed)
    } else {
        0
    }
}

/// The read answered by new, counted; `None` (counted as a fallback) sends it to legacy.
async fn answer_on_new(
    ctx: &Context,
    rules: &RuleSet,
    p: &ReadPlan,
    request: &Request,
    settings: &reads::Settings,
) -> Option<BytesMut> {
    match reads::answer(&ctx.reads, rules, p, request, settings).await {
        Ok(answer) => {
            ctx.reads.count(p, |t| {
                t.new.inc();
            });
            ctx.metrics.statement(StatementKind::Read);
            Some(answer)
        }
        Err(why) => {
            tracing::debug!(reason = why.as_str(), "read falls back to legacy");
            ctx.reads.count(p, |t| {
                t.fallbacks[why as usize].inc();
            });
            None
        }
    }
}

/// The bucket that decides a ramped read: by the pinned key's value when the plan pins one
/// (every read of one key goes the same way), else by the connection.
fn stickiness(plan: &CachedPlan, request: &Request, conn_seed: u64) -> u8 {
    use std::fmt::Write;
    match plan.as_ref() {
        Ok(p) => match &p.key {
            // The table's name, then each key value after a NUL, fed as they come.
            Some(keys) => {
                let mut b = p.table_bucket;
                for k in keys {
                    b.feed(b"\0");
                    match k {
                        KeyRef::Literal(v) => b.feed(v.as_bytes()),
                        KeyRef::Param(n) => match request.param(*n) {
                            Some(v) => b.feed(String::from_utf8_lossy(&v).as_bytes()),
                            None => {
                                let _ = write!(b, "{conn_seed}");
                            }
                        },
                    }
                }
                b.finish()
            }
            None => bucket(&conn_seed.to_le_bytes()),
        },
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use proptest::prelude::*;

    use super::*;
    use crate::proto::codec::put_message;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_message(&mut b, tag, |o| o.put_slice(body));
        b.to_vec()
    }

    /// Bind of the unnamed statement to the unnamed portal with one text parameter.
    fn bind() -> Vec<u8> {
        frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x017\0\0")
    }

    fn group(buf: &[u8]) -> Option<(usize, Describe)> {
        let mut it = frames(buf, 0, buf.len());
        let (at, _, len) = it.next()?;
        bind_group(buf, &mut it, at, len, b"").map(|(end, _, d)| (end, d))
    }

    #[test]
    fn a_bind_group_is_bind_describe_execute_of_all_rows_and_sync() {
        let exec = frame(b'E', b"\0\0\0\0\0");
        let sync = frame(b'S', b"");
        let whole = [bind(), frame(b'D', b"P\0"), exec.clone(), sync.clone()].concat();
        assert_eq!(group(&whole), Some((whole.len(), Describe::Portal)));
        let stmt = [bind(), frame(b'D', b"S\0"), exec.clone(), sync.clone()].concat();
        assert_eq!(group(&stmt), Some((stmt.len(), Describe::Statement)));
        let bare = [bind(), exec.clone(), sync.clone()].concat();
        assert_eq!(group(&bare), Some((bare.len(), Describe::None)));
        for not in [
            // A row limit, a Flush instead of Sync, another portal described, no Sync yet.
            [bind(), frame(b'E', b"\0\0\0\0\x05"), sync.clone()].concat(),
            [bind(), exec.clone(), frame(b'H', b"")].concat(),
            [bind(), frame(b'D', b"Px\0"), exec.clone(), sync.clone()].concat(),
            [bind(), exec.clone()].concat(),
        ] {
            assert_eq!(group(&not), None);
        }
    }

    proptest! {
        /// Any frames at all: an answer or `None`, never a panic, and never past the buffer.
        #[test]
        fn arbitrary_frames_never_panic(
            parts in proptest::collection::vec(
                (prop_oneof![Just(b'B'), Just(b'D'), Just(b'E'), Just(b'S'), Just(b'P'), any::<u8>()],
                 proptest::collection::vec(any::<u8>(), 0..24)),
                0..8,
            ),
            cut in 0usize..200,
        ) {
            let mut buf = bind();
            for (tag, body) in &parts {
                buf.extend(frame(*tag, body));
            }
            buf.truncate(cut.max(5).min(buf.len()));
            if let Some((end, _)) = group(&buf) {
                prop_assert!(end <= buf.len());
            }
        }
    }
}
