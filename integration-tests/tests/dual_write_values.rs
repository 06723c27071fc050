//! Dual-write carries every value bit for bit (float `-0`, `NaN`, infinities, numeric scale,
//! `json` text, every Unicode plane, domains, enums, composites, arrays of all of these), and
//! the mirror's commits on new are durable whatever new's default `synchronous_commit`.

use pgdual_integration_tests::*;

/// The column types, created alike in legacy and new (the rules check wants a transform's
/// type and its new column's type to have the same name).
fn types_sql(schema: &str) -> String {
    format!(
        "DROP TYPE IF EXISTS {schema}.dwv_mood, {schema}.dwv_pair CASCADE;
         DROP DOMAIN IF EXISTS {schema}.dwv_amount, {schema}.dwv_label CASCADE;
         CREATE TYPE {schema}.dwv_mood AS ENUM ('sad', 'ok', 'happy 😀');
         CREATE DOMAIN {schema}.dwv_amount AS numeric CHECK (VALUE IS NOT NULL);
         CREATE DOMAIN {schema}.dwv_label AS text CHECK (length(VALUE) < 100);
         CREATE TYPE {schema}.dwv_pair AS (f4 float4, f8 float8, label text);"
    )
}

/// Every column and its type; the new table has the same columns.
fn columns(schema: &str) -> String {
    format!(
        "id int PRIMARY KEY, f4 float4, f8 float8, f4a float4[], f8a float8[],
         pair {schema}.dwv_pair, pairs {schema}.dwv_pair[], num numeric, nums numeric[],
         amount {schema}.dwv_amount, amounts {schema}.dwv_amount[], ts timestamptz,
         tss timestamptz[], iv interval, ivs interval[], by bytea, bys bytea[], jb jsonb,
         js json, jss json[], txt text, txts text[], label {schema}.dwv_label,
         labels {schema}.dwv_label[], mood {schema}.dwv_mood, moods {schema}.dwv_mood[],
         ch char(5), vc varchar(20)"
    )
}

const NAMES: &[&str] = &[
    "id", "f4", "f8", "f4a", "f8a", "pair", "pairs", "num", "nums", "amount", "amounts", "ts",
    "tss", "iv", "ivs", "by", "bys", "jb", "js", "jss", "txt", "txts", "label", "labels", "mood",
    "moods", "ch", "vc",
];

fn rules() -> String {
    let mut r = String::from(
        "[[table]]\nlegacy = \"public.dwv\"\nnew = \"dwv.vals\"\nkeys = [\"id\"]\nwrite = \"on\"\n\
         [table.columns]\n",
    );
    for n in NAMES {
        r.push_str(&format!("{n} = \"{n}\"\n"));
    }
    r
}

/// One line per row: every column's text form (`NULL` unquoted, so NULL and 'NULL' differ),
/// and the binary form of the float columns, which tells `-0` from `0` whatever the text.
fn view(table: &str) -> String {
    let text: Vec<String> = NAMES.iter().map(|n| format!("{n}::text")).collect();
    format!(
        "SELECT format('{fmt}', {text}, encode(float4send(f4), 'hex'), encode(float8send(f8), 'hex'), \
         encode(float8send((pair).f8), 'hex'), \
         (SELECT string_agg(encode(float8send(x), 'hex'), ',') FROM unnest(f8a) AS x)) \
         FROM {table} ORDER BY id",
        fmt = vec!["%L"; NAMES.len() + 4].join("|"),
        text = text.join(", "),
    )
}

/// Literals chosen to break any lossy path: signed zeros, NaN and infinities (also inside
/// arrays and composites), numeric scale, infinite timestamps, intervals with mixed signs,
/// bytes, `json` whose text a `jsonb` round trip would reorder, strings from every plane.
const ROWS: &str = r#"
INSERT INTO dwv VALUES
 (1, '-0', '-0', '{-0,NaN,Infinity,-Infinity,1.17549435e-38}',
  '{-0,NaN,Infinity,-Infinity,4.9e-324,0.1,1.7976931348623157e308}',
  ROW('-0', '-0', 'a "quoted", (comma) label')::dwv_pair, ARRAY[ROW('NaN', '-Infinity', NULL)::dwv_pair, ROW('-0', '-0', '')::dwv_pair],
  'NaN', '{1.500,NaN,-0.000,1e-30,123456789012345678901234567890.123456789}',
  '1.500', '{0.10,-0.0}', 'infinity', '{-infinity,infinity,"2000-02-29 23:59:59.999999+05:45"}',
  '1 year -2 mons +3 days -04:05:06.789', '{"-1 days +00:00:00.000001","178000000 years"}',
  '\x00ff7f80', '{"\\x","\\xdeadbeef"}', '{"b": 1, "a": [1.500, 2e-3, "x"]}',
  '{"b":1,  "a":2, "a":3}', '{"{\"z\":1,\"a\":2}","[1.0, -0]"}',
  E'tab\t nl\n bs\\ q'' é 中 😀 𝄞 𠀀 𰀀 󠀁 󰀀 􏿽', '{"","NULL",null,"a,b","{x}"}',
  E'label \u00e9\U0001F600', '{"x","y "}', 'happy 😀', '{sad,ok,"happy 😀"}', 'ab ', 'ends with space '),
 (2, '-Infinity', 'NaN', '{}', '{-0}', ROW('Infinity', 'NaN', 'x')::dwv_pair, '{}', '1.500', '{}',
  '-0.000', NULL, '-infinity', '{}', '-178000000 years', '{}', '', '{}', '[]', ' [ 1 , 2 ] ',
  '{}', '', '{}', '', '{}', 'sad', '{}', '', ''),
 (3, 'Infinity', '-Infinity', NULL, NULL, NULL, NULL, '-0', NULL, '0.000000000000000000001',
  NULL, '1970-01-01 00:00:00+00', NULL, '0', NULL, NULL, NULL, 'null', 'null', NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

#[tokio::test]
async fn every_value_reaches_new_bit_for_bit() {
    let l = connect(legacy().port).await;
    l.batch_execute(&format!(
        "{} DROP TABLE IF EXISTS dwv; CREATE TABLE dwv ({});",
        types_sql("public"),
        columns("public")
    ))
    .await
    .unwrap();
    let n = connect(new_db().port).await;
    n.batch_execute(&format!(
        "{} DROP SCHEMA IF EXISTS dwv CASCADE; CREATE SCHEMA dwv; CREATE TABLE dwv.vals ({});",
        types_sql("public"),
        columns("public")
    ))
    .await
    .unwrap();
    let (p, _dir) = proxy_with_rules(&rules(), new_db());
    wait_mirror_ready(&p).await;
    let c = connect(p.local_addr().port()).await;
    c.batch_execute(ROWS).await.unwrap();
    let rows = assert_converges(new_db(), &view("public.dwv"), &view("dwv.vals"), 30).await;
    assert_eq!(rows.len(), 3);

    // The comparison above could pass if legacy had lost the values too: check new's bits.
    let bits = text_rows(
        new_db().port,
        "SELECT concat_ws(' ', encode(float4send(f4), 'hex'), encode(float8send(f8), 'hex'), \
         encode(float8send(f8a[1]), 'hex'), encode(float8send((pair).f8), 'hex'), \
         encode(float4send((pair).f4), 'hex'), encode(float8send((pairs[2]).f8), 'hex'), \
         num, nums[1], amount, ts, js, txt = E'tab\\t nl\\n bs\\\\ q'' é 中 😀 𝄞 𠀀 𰀀 󠀁 󰀀 􏿽') \
         FROM dwv.vals WHERE id = 1",
    )
    .await;
    assert_eq!(
        bits,
        [
            "80000000 8000000000000000 8000000000000000 8000000000000000 80000000 \
             8000000000000000 NaN 1.500 1.500 infinity {\"b\":1,  \"a\":2, \"a\":3} t"
        ]
    );
    let more = text_rows(
        new_db().port,
        "SELECT concat_ws(' ', f4, f8, num, amount, ts, iv, js) FROM dwv.vals WHERE id = 2",
    )
    .await;
    assert_eq!(
        more,
        ["-Infinity NaN 1.500 0.000 -infinity -178000000 years  [ 1 , 2 ] "]
    );
    assert_eq!(dead_letters(&p), 0);

    // Updates and deletes carry the same way, keys included.
    c.batch_execute(
        "UPDATE dwv SET f8 = '-0', f4a = '{-0}', num = '2.50' WHERE id = 2; DELETE FROM dwv WHERE id = 3;",
    )
    .await
    .unwrap();
    let rows = assert_converges(new_db(), &view("public.dwv"), &view("dwv.vals"), 30).await;
    assert_eq!(rows.len(), 2);
}

#[tokio::test]
async fn the_mirror_commits_synchronously_when_new_defaults_to_asynchronous_commit() {
    let n = connect(new_db().port).await;
    n.batch_execute("ALTER SYSTEM SET synchronous_commit = off")
        .await
        .unwrap();
    n.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // A new session on new now commits asynchronously by default.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while text_rows(new_db().port, "SHOW synchronous_commit").await != ["off"] {
        assert!(std::time::Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let l = connect(legacy().port).await;
    l.batch_execute("DROP TABLE IF EXISTS dws; CREATE TABLE dws (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // The new table records the setting of the session that inserts each row: the mirror's.
    n.batch_execute(
        "DROP SCHEMA IF EXISTS dws CASCADE; CREATE SCHEMA dws;
         CREATE TABLE dws.t (id int PRIMARY KEY, v text,
             commit_mode text NOT NULL DEFAULT current_setting('synchronous_commit'))",
    )
    .await
    .unwrap();
    let rules = "[[table]]\nlegacy = \"public.dws\"\nnew = \"dws.t\"\nkeys = [\"id\"]\n\
                 write = \"on\"\n[table.columns]\nid = \"id\"\nv = \"v\"\n";
    let (p, _dir) = proxy_with_rules(rules, new_db());
    wait_mirror_ready(&p).await;
    let c = connect(p.local_addr().port()).await;
    c.batch_execute("INSERT INTO dws VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();
    let rows = assert_converges(
        new_db(),
        "SELECT id || ':' || v || ':on' FROM dws ORDER BY id",
        "SELECT id || ':' || v || ':' || commit_mode FROM dws.t ORDER BY id",
        30,
    )
    .await;
    assert_eq!(rows, ["1:one:on", "2:two:on"]);
    n.batch_execute("ALTER SYSTEM RESET synchronous_commit")
        .await
        .unwrap();
    n.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}
