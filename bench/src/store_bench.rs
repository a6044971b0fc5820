//! The `store` scenario: `Store::write_batch` and history pages through
//! `tidings-store` directly, with no server, MQTT or HTTP in the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use tidings_store::{
    ConversationKind, NewConversation, NewMessage, NewUser, Role, SeqPage, Store, WriteOp,
    WriteOutcome,
};

/// The realtime worker's largest batch (broker/src/worker MAX_BATCH).
pub const WORKER_MAX_BATCH: usize = 256;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchRow {
    pub batch: usize,
    pub messages: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub batch_p99_ms: f64,
    /// CPU of this process (the store runs in it) per message stored. Steadier than
    /// messages/s, which also counts the time spent waiting on fsync.
    pub cpu_us_per_msg: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreResult {
    pub backend: String,
    pub batches: Vec<BatchRow>,
    pub history_messages: u64,
    pub history_requested: u64,
    pub conversations: usize,
    pub build_seconds: f64,
    pub build_per_sec: f64,
    /// How the history table was filled: `write_batch`, or `bulk SQL` (SQLite).
    pub build_method: String,
    pub page_limit: u32,
    pub queries: u64,
    pub page_p50_ms: f64,
    pub page_p99_ms: f64,
    pub page_p999_ms: f64,
}

/// A tiny xorshift: the picks need to be spread, not secure, and reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

struct World {
    store: Arc<dyn Store>,
    convs: Vec<(String, String)>, // (conversation, a member who sends)
    written: u64,
}

impl World {
    async fn write(&mut self, n: usize) -> Result<()> {
        let now = tidings_store::now_ms();
        let ops: Vec<WriteOp> = (0..n)
            .map(|i| {
                let (conv, sender) = &self.convs[(self.written as usize + i) % self.convs.len()];
                WriteOp::Send(NewMessage {
                    id: ulid::Ulid::new().to_string(),
                    conv: conv.clone(),
                    sender: sender.clone(),
                    client_msg_id: ulid::Ulid::new().to_string(),
                    body: crate::load::body(0, self.written + i as u64),
                    reply_to: None,
                    mentions: vec![],
                    attachment: None,
                    created_at: now,
                })
            })
            .collect();
        let out = self.store.write_batch(&ops).await?;
        if let Some(WriteOutcome::Rejected { code, message }) = out
            .iter()
            .find(|o| matches!(o, WriteOutcome::Rejected { .. }))
        {
            anyhow::bail!("write_batch refused a send: {code:?} {message}");
        }
        self.written += n as u64;
        Ok(())
    }
}

/// Fills the history table of the SQLite database at `path` up to `target` messages
/// with plain SQL, in transactions of [`BULK_CHUNK`] until `bound`: `write_batch`
/// stores about 13,000 messages a second here, so 10M would take 13 minutes. The rows
/// are what `write_batch` stores (same columns, ids, rowids and indexes), spread round-robin over
/// the conversations with gap-free seqs; what is skipped is their `inbox_events` rows
/// and the search index, which a history page does not read. Returns how many it wrote.
fn bulk_fill_sqlite(path: &std::path::Path, target: u64, bound: Duration) -> Result<u64> {
    let t0 = Instant::now();
    let db = rusqlite::Connection::open(path)?;
    // The store's own connections wait for ours (its search indexer ticks meanwhile).
    db.busy_timeout(Duration::from_secs(30))?;
    db.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -262144;          CREATE TEMP TABLE bulk_convs (k INTEGER PRIMARY KEY, conv TEXT, sender TEXT, base INTEGER,          block INTEGER);          INSERT INTO bulk_convs SELECT row_number() OVER (ORDER BY id) - 1, id, created_by, last_seq,          message_block FROM conversations;",
    )?;
    let convs: u64 = db.query_row("SELECT COUNT(*) FROM bulk_convs", [], |r| r.get(0))?;
    anyhow::ensure!(convs > 0, "no conversations to fill");
    let now = tidings_store::now_ms();
    let mut written = 0u64;
    while written < target && t0.elapsed() < bound {
        let n = (target - written).min(BULK_CHUNK);
        let tx = db.unchecked_transaction()?;
        // Message i goes to conversation i % convs with seq base + i / convs + 1, at the
        // rowid the store would give it (block * 2^32 + seq, migration 0011). Ids sort
        // after the ULIDs written before (as new ULIDs would); 64-byte bodies.
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)              INSERT INTO messages (rowid, id, conversation_id, seq, sender_id, client_msg_id,                                    kind, body, created_at)              SELECT b.block * 4294967296 + b.base + n.i / ?3 + 1,                     printf('7ZZ%023d', n.i), b.conv, b.base + n.i / ?3 + 1, b.sender,                     printf('bulk%022d', n.i), 'text',                     substr(printf('B%d.', n.i) || printf('%.64c', 'x'), 1, 64), ?4              FROM n JOIN bulk_convs b ON b.k = n.i % ?3",
            rusqlite::params![
                written as i64,
                (written + n - 1) as i64,
                convs as i64,
                now
            ],
        )?;
        // The insert trigger queued these rows for the search index; nothing searches
        // them, and an indexer working through 10M rows would disturb the pages.
        // Each conversation's new rows are the rowids above its old last seq in its
        // block: one range of the queue's primary key per conversation.
        tx.execute(
            "DELETE FROM fts_pending WHERE rowid IN (SELECT p.message_rowid              FROM bulk_convs b JOIN fts_pending p              ON p.message_rowid > b.block * 4294967296 + b.base              AND p.message_rowid < (b.block + 1) * 4294967296)",
            [],
        )?;
        tx.commit()?;
        written += n;
    }
    db.execute(
        "UPDATE conversations SET last_seq =          (SELECT MAX(seq) FROM messages m WHERE m.conversation_id = conversations.id),          last_activity_at = ?1 WHERE id IN (SELECT conv FROM bulk_convs)",
        [now],
    )?;
    // The table must be laid out as the store lays it out, or the pages below would
    // time another table: each conversation's first message (stored by `write_batch`)
    // and its last (bulk) are where the store's rowid rule puts them.
    let misplaced: i64 = db.query_row(
        "SELECT COUNT(*) FROM bulk_convs b JOIN conversations c ON c.id = b.conv, \
         (SELECT 1 AS seq UNION ALL SELECT 0) AS which \
         WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id \
           AND m.seq = CASE which.seq WHEN 1 THEN 1 ELSE c.last_seq END \
           AND m.rowid = c.message_block * 4294967296 + m.seq)",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        misplaced == 0,
        "{misplaced} messages are not where the store would put them (migration 0011)"
    );
    // Settle as a long-running database would be: every page checkpointed into the
    // file and synced, the WAL empty, rather than gigabytes still being written back
    // while the history pages are timed.
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(written)
}

/// Rows per transaction of the bulk build (a few seconds each, so the store's own
/// connections, waiting on SQLite's lock, are never held past their busy timeout).
const BULK_CHUNK: u64 = 500_000;

pub async fn run(
    url: &str,
    history_messages: u64,
    batch_sizes: &[usize],
    per_batch: Duration,
    build_bound: Duration,
) -> Result<StoreResult> {
    let store = tidings_store::connect(url)
        .await
        .with_context(|| format!("open {url}"))?;
    let backend = format!("{:?}", store.backend());
    let now = tidings_store::now_ms();
    // 100 users in 50 direct conversations: the history table is spread over
    // conversations like a real one, not one endless thread.
    let mut users = Vec::new();
    let tag = ulid::Ulid::new().to_string().to_lowercase();
    for i in 0..100 {
        let id = ulid::Ulid::new().to_string();
        store
            .create_user(NewUser {
                id: id.clone(),
                username: format!("s{}{i}", &tag[20..]),
                display_name: None,
                password_hash: "not-a-login".into(),
                created_at: now,
            })
            .await?;
        users.push(id);
    }
    let mut convs = Vec::new();
    for pair in users.chunks_exact(2) {
        let created = store
            .create_conversation(NewConversation {
                id: ulid::Ulid::new().to_string(),
                kind: ConversationKind::Direct,
                name: None,
                topic: None,
                created_by: pair[0].clone(),
                members: vec![
                    (pair[0].clone(), Role::Member),
                    (pair[1].clone(), Role::Member),
                ],
                created_at: now,
            })
            .await?;
        convs.push((created.conversation.id, pair[0].clone()));
    }
    let mut world = World {
        store: store.clone(),
        convs,
        written: 0,
    };

    // Throughput per batch size, each for `per_batch` (bounded in count too).
    let mut batches = Vec::new();
    for &b in batch_sizes {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let t0 = Instant::now();
        let cpu0 = crate::procs::self_cpu_secs();
        let mut n = 0u64;
        while t0.elapsed() < per_batch && n < 2_000_000 {
            let t = Instant::now();
            world.write(b).await?;
            hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
            n += b as u64;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = crate::procs::self_cpu_secs() - cpu0;
        batches.push(BatchRow {
            batch: b,
            messages: n,
            seconds: secs,
            per_sec: n as f64 / secs,
            batch_p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            cpu_us_per_msg: cpu * 1e6 / n.max(1) as f64,
        });
    }

    // The large table. Bounded in time too: the report says how many messages the
    // table really held.
    let t0 = Instant::now();
    let before = world.written;
    let build_method = match url.strip_prefix("sqlite://") {
        Some(path) => {
            let (path, target) = (
                std::path::PathBuf::from(path),
                history_messages.saturating_sub(world.written),
            );
            let wrote =
                tokio::task::spawn_blocking(move || bulk_fill_sqlite(&path, target, build_bound))
                    .await??;
            world.written += wrote;
            "bulk SQL"
        }
        None => {
            // As the worker writes under load (full batches).
            while world.written < history_messages && t0.elapsed() < build_bound {
                let n = ((history_messages - world.written) as usize).min(WORKER_MAX_BATCH * 4);
                world.write(n).await?;
            }
            "write_batch"
        }
    };
    let build_seconds = t0.elapsed().as_secs_f64();
    let built = world.written - before;
    // On SQLite new messages wait in a queue for the search index (migration 0004),
    // which a build this fast outruns; a search indexes the backlog first. Done here,
    // outside the timing, so the history pages below are read from a settled database
    // rather than beside an indexer catching up.
    let (conv, member) = &world.convs[0];
    store
        .search_messages(member, "settle", Some(conv), 1, 0)
        .await?;

    // History pages: the newest 50 before a random seq of a random conversation.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let per_conv = (world.written / world.convs.len() as u64).max(1);
    let page_limit = 50;
    let t0 = Instant::now();
    let mut queries = 0u64;
    while queries < 5_000 && t0.elapsed() < Duration::from_secs(30) {
        let (conv, _) = &world.convs[(rng.next() % world.convs.len() as u64) as usize];
        let before = 1 + rng.next() % per_conv;
        let t = Instant::now();
        let page = store
            .history(
                conv,
                SeqPage::Before {
                    before: Some(before),
                    limit: page_limit,
                },
            )
            .await?;
        hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
        std::hint::black_box(page.len());
        queries += 1;
    }
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    Ok(StoreResult {
        backend,
        batches,
        history_messages: world.written,
        history_requested: history_messages,
        conversations: world.convs.len(),
        build_seconds,
        build_per_sec: built as f64 / build_seconds.max(1e-9),
        build_method: build_method.into(),
        page_limit,
        queries,
        page_p50_ms: q(0.5),
        page_p99_ms: q(0.99),
        page_p999_ms: q(0.999),
    })
}
