//! Live streams (server-sent events): the global feed, a user's home timeline, the caller's
//! notifications.
//!
//! The projector writes one `stream` row per message in the transaction that applies its event,
//! keyed by the event's partition and offset (`projector/sql/streams.sql`). The [`hub`] follows
//! the projector's progress and hands each new message to the streams it belongs to, so a
//! message goes out only once the read models have applied its event. A stream's resume id is
//! its [`Place`]: the next offset of each partition. A client that comes back with one
//! (`Last-Event-ID`, or `?after=`) first gets what it missed from the database, then the live
//! messages; since the place means the same to every query API and every generation of the
//! read models, that holds across restarts of either service and across a rebuild.
//!
//! Messages within a partition go out in log order; partitions interleave as the projector
//! applies them (the log has no order across partitions).
//!
//! A message's data is read when it is sent, as the matching read would show it: a post deleted
//! by then is not sent as `post` (its `post_deleted` follows), and a notification withdrawn by
//! then is not sent at all. A timeline's posts are those of the users it follows when the post
//! is sent.

mod hub;
mod resume;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chronicle_infra::Problem;
use chronicle_infra::http::{MinPositions, Segment, parse_id, query_pairs};
use chronicle_infra::problem::ProblemBody;
use chronicle_infra::token;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

pub(crate) use hub::Hub;
use hub::Registration;
use resume::Place;

use crate::AppState;
use crate::handlers::post_at;
use crate::notifications::notification_at;

/// Which messages a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    /// Every message (the hub's reads).
    All,
    /// New and deleted posts.
    Feed,
    /// The posts of this user and of those they follow.
    Timeline(Uuid),
    /// This user's notifications.
    Notifications(Uuid),
}

/// What a message is about, to tell which streams it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum About {
    /// A post of `author`, published or deleted.
    Post { author: Uuid },
    /// A notification of `recipient`.
    Notification { recipient: Uuid },
}

/// One message, rendered once for every stream it goes to.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) about: About,
    /// Its `event:` and `data:` lines; the `id:` line differs from stream to stream.
    text: String,
}

/// What one read of the stream returned.
pub(crate) struct Fetched {
    /// The messages that are still true, in log order within each partition.
    pub(crate) messages: Vec<Message>,
    /// Rows read, including those whose message is no longer true.
    pub(crate) rows: usize,
    /// The place of the last row read.
    pub(crate) last: Option<(i32, i64)>,
}

/// The statement that reads the messages of `topic` from generation `schema`'s stream, and
/// the user it takes as `$5`, if any (see [`fetch`]).
pub(crate) fn stream_sql(schema: &str, topic: &Topic) -> (String, Option<Uuid>) {
    let (filter, user) = match topic {
        Topic::All => ("true", None),
        Topic::Feed => ("s.kind <> 'notification'", None),
        Topic::Timeline(user) => (
            "s.kind <> 'notification' AND (s.author_id = $5 OR s.author_id IN (
                 SELECT followee_id FROM {s}.follows WHERE follower_id = $5))",
            Some(*user),
        ),
        Topic::Notifications(user) => (
            "s.kind = 'notification' AND s.recipient_id = $5",
            Some(*user),
        ),
    };
    let sql = STREAM.replace("{filter}", filter).replace("{s}", schema);
    (sql, user)
}

/// The messages in `gaps` (partition, from offset, until offset) that `statement`, made of
/// [`stream_sql`] (with its `user`), reads: at most `limit` rows, ordered by partition and
/// offset.
pub(crate) async fn fetch(
    client: &tokio_postgres::Client,
    statement: &Statement,
    user: Option<Uuid>,
    gaps: &[(i32, i64, i64)],
    limit: i64,
) -> Result<Fetched, tokio_postgres::Error> {
    let partitions: Vec<i32> = gaps.iter().map(|gap| gap.0).collect();
    let from: Vec<i64> = gaps.iter().map(|gap| gap.1).collect();
    let until: Vec<i64> = gaps.iter().map(|gap| gap.2).collect();
    let rows = match user {
        Some(user) => {
            client
                .query(statement, &[&partitions, &from, &until, &limit, &user])
                .await?
        }
        None => {
            client
                .query(statement, &[&partitions, &from, &until, &limit])
                .await?
        }
    };
    Ok(Fetched {
        messages: rows.iter().filter_map(message_from).collect(),
        rows: rows.len(),
        last: rows.last().map(|row| (row.get(0), row.get(1))),
    })
}

/// The stream's rows in the gaps with what their messages say: the post (columns 5 to 13) and
/// the notification (14 to 21) as the matching reads show them, null where that read would show
/// nothing.
///
/// The page is chosen first: per gap, a range of the stream's key, at most `$4` rows each, then
/// the first `$4` of those. Only the page's rows are looked up, each with index lookups: its post
/// with the author and counters, or its notification with the actor and the recipient's read
/// mark. `OFFSET 0` keeps each lookup a subquery of its own (PostgreSQL would otherwise merge
/// it into the join, where a plan may scan a whole table). Measured on a 49,000-row stream
/// with eight partitions behind: joining before the page was chosen looked up 2,056 rows for
/// a page of 257, 17,056 buffers and 21 ms.
const STREAM: &str = "SELECT s.partition, s.event_offset, s.kind, s.post_id, s.author_id,
        p.post_id, p.body, p.published_at, p.like_count, p.user_id, p.handle, p.display_name,
        p.reply_to, p.reply_count,
        n.notification_id, n.kind, n.post_id, n.created_at, n.user_id, n.handle, n.display_name,
        n.read, s.recipient_id
    FROM (
        SELECT s.* FROM unnest($1::int4[], $2::int8[], $3::int8[]) AS g(partition, after, until)
        CROSS JOIN LATERAL (
            SELECT * FROM {s}.stream s
            WHERE s.partition = g.partition AND s.event_offset >= g.after
              AND s.event_offset < g.until AND {filter}
            ORDER BY s.event_offset, s.kind LIMIT $4) s
        ORDER BY s.partition, s.event_offset, s.kind LIMIT $4) s
    LEFT JOIN LATERAL (
        SELECT p.post_id, p.body, p.published_at, p.like_count, u.user_id, u.handle,
            u.display_name, p.reply_to, coalesce(c.reply_count, 0) AS reply_count
        FROM {s}.posts p JOIN {s}.users u ON u.user_id = p.author_id
        LEFT JOIN {s}.post_counters c ON c.post_id = p.post_id
        WHERE s.kind = 'post' AND p.post_id = s.post_id AND p.deleted_at IS NULL
        OFFSET 0) p ON true
    LEFT JOIN LATERAL (
        SELECT n.notification_id, n.kind, n.post_id, n.created_at, a.user_id, a.handle,
            a.display_name,
            n.notification_id <= coalesce(
                (SELECT up_to FROM {s}.notification_reads r WHERE r.user_id = n.recipient_id),
                '00000000-0000-0000-0000-000000000000'::uuid) AS read
        FROM {s}.notifications n JOIN {s}.users a ON a.user_id = n.actor_id
        WHERE s.kind = 'notification' AND n.notification_id = s.notification_id
        OFFSET 0) n ON true
    ORDER BY s.partition, s.event_offset, s.kind";

/// `data:` of a `post_deleted` message.
#[derive(Serialize)]
struct PostDeleted {
    post_id: Uuid,
}

/// The message a row says, unless the read it matches would no longer show it.
fn message_from(row: &Row) -> Option<Message> {
    let kind: &str = row.get(2);
    let (about, data) = match kind {
        // The projector streams a post or a notification only once its author or actor is a
        // user; a post deleted or a notification withdrawn since is not sent.
        "post" => {
            row.get::<_, Option<Uuid>>(5)?;
            row.get::<_, Option<Uuid>>(9)?;
            let author = row.get(4);
            (
                About::Post { author },
                serde_json::to_string(&post_at(row, 5)),
            )
        }
        "post_deleted" => (
            About::Post { author: row.get(4) },
            serde_json::to_string(&PostDeleted {
                post_id: row.get(3),
            }),
        ),
        "notification" => {
            row.get::<_, Option<Uuid>>(14)?;
            row.get::<_, Option<Uuid>>(18)?;
            let recipient = row.get(22);
            (
                About::Notification { recipient },
                serde_json::to_string(&notification_at(row, 14)),
            )
        }
        _ => return None,
    };
    Some(Message {
        partition: row.get(0),
        offset: row.get(1),
        about,
        text: format!("event: {kind}\ndata: {}\n", data.ok()?),
    })
}

/// A write to a client takes the messages queued for it up to about this many bytes.
const CHUNK_BYTES: usize = 16 * 1024;

/// Rows one catch-up read takes at most.
const CATCH_UP_ROWS: i64 = 200;

/// One client's stream: what it missed (from the database), then the hub's messages.
struct Subscription {
    app: AppState,
    topic: Topic,
    /// Where the client is: what its next id will say.
    place: Place,
    /// What it missed and is still to be read: from where, up to where.
    catch_up: Option<(Place, Place)>,
    schema: String,
    pending: VecDeque<Message>,
    queue: mpsc::Receiver<Arc<Message>>,
    _registration: Registration,
    heartbeat: tokio::time::Interval,
    opened: bool,
    /// The bearer token of a private stream, checked again at each heartbeat: the stream ends
    /// once the token expires or its session ends (a logout, a password change).
    token: Option<String>,
}

impl Subscription {
    /// The next bytes to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<String> {
        if !self.opened {
            self.opened = true;
            // The first id: a client that loses the connection before its first message comes
            // back from here, not from whatever is new by then.
            return Some(format!("retry: 1000\nid: {}\n\n", self.place.encode()));
        }
        loop {
            if let Some(message) = self.pending.pop_front() {
                if let Some(chunk) = self.send(&message) {
                    return Some(chunk);
                }
                continue;
            }
            if self.catch_up.is_some() {
                if let Err(err) = self.read_missed().await {
                    tracing::warn!(error = %format!("{err:#}"), "a live stream could not read what its client missed; ending it");
                    return None;
                }
                continue;
            }
            tokio::select! {
                message = self.queue.recv() => {
                    // None: cut off for not keeping up; the client resumes from its last id.
                    let message = message?;
                    if let Some(chunk) = self.send(&message) {
                        return Some(self.with_queued(chunk));
                    }
                }
                _ = self.heartbeat.tick() => {
                    if !self.still_authorized().await {
                        return None;
                    }
                    return Some(self.heartbeat());
                }
                () = self.app.hub.closed() => return None,
            }
        }
    }

    /// `chunk` and the messages queued behind it, up to [`CHUNK_BYTES`]: one write for a
    /// round's messages rather than one each.
    fn with_queued(&mut self, mut chunk: String) -> String {
        while chunk.len() < CHUNK_BYTES {
            let Ok(message) = self.queue.try_recv() else {
                break;
            };
            if let Some(more) = self.send(&message) {
                chunk.push_str(&more);
            }
        }
        chunk
    }

    /// The message's bytes, unless the client has it already (it resumed from a place ahead
    /// of the hub's).
    fn send(&mut self, message: &Message) -> Option<String> {
        if message.offset < self.place.next(message.partition) {
            return None;
        }
        self.place.pass(message.partition, message.offset);
        Some(format!("id: {}\n{}\n", self.place.encode(), message.text))
    }

    /// Reads the next page of what the client missed.
    async fn read_missed(&mut self) -> anyhow::Result<()> {
        let Some((from, until)) = &mut self.catch_up else {
            return Ok(());
        };
        let gaps = from.gaps(until);
        let client = self.app.pool.get().await?;
        let (sql, user) = stream_sql(&self.schema, &self.topic);
        let statement = client.prepare_cached(&sql).await?;
        let fetched = fetch(&client, &statement, user, &gaps, CATCH_UP_ROWS).await?;
        match fetched.last {
            // One stream's rows: an event has at most one, so the page ends on a whole event.
            Some((partition, offset)) if fetched.rows as i64 >= CATCH_UP_ROWS => {
                from.pass_page(&gaps, partition, offset);
            }
            _ => self.catch_up = None,
        }
        self.pending.extend(fetched.messages);
        Ok(())
    }

    /// Whether the stream's token (if it has one) is still valid and its session live. A
    /// database that cannot say keeps the stream open until the next heartbeat asks again.
    async fn still_authorized(&self) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        match self.app.tokens.authenticate(token).await {
            Ok(_) => true,
            Err(problem) if problem.code() == "unauthorized" => {
                tracing::info!(
                    "a private live stream ended: its token expired or its session ended"
                );
                false
            }
            Err(_) => true,
        }
    }

    /// A comment that keeps the connection open, and, when the client has every message the
    /// hub handed out, the id of where the hub got (so that a quiet stream's id keeps up).
    fn heartbeat(&mut self) -> String {
        if let Some(delivered) = self.app.hub.delivered()
            && !self.queue.is_closed()
            && self.queue.is_empty()
        {
            self.place = self.place.join(&delivered.place);
            return format!(": heartbeat\nid: {}\n\n", self.place.encode());
        }
        ": heartbeat\n\n".to_owned()
    }
}

impl AppState {
    /// Opens a stream of `topic` for a request with the query string's `pairs` and `headers`.
    async fn stream(
        &self,
        topic: Topic,
        pairs: &[(String, String)],
        headers: &HeaderMap,
        token: Option<String>,
    ) -> Result<Response, Problem> {
        let resume = match headers.get("last-event-id") {
            Some(value) => Some(value.to_str().unwrap_or_default().to_owned()),
            None => pairs
                .iter()
                .find(|(key, _)| key == "after")
                .map(|(_, value)| value.clone()),
        };
        // An empty id is no id (the WHATWG parser keeps an empty `id:` as "no last id").
        let resume = resume
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(Place::decode)
            .transpose()?;
        // Just started: a client reconnecting to a query API that restarts gets its stream,
        // not a 503 that would end its `EventSource` for good.
        let _ = tokio::time::timeout(self.consistency_wait, self.hub.wait_started()).await;
        let read = self.read_with(pairs, false).await?;
        read.query_added("live streams are", "SELECT 1 FROM {s}.stream LIMIT 0", &[])
            .await?;
        if let Topic::Timeline(user) = topic {
            read.require_user(user).await?;
        }
        let (registration, queue, delivered) = self.hub.register(topic).ok_or_else(|| {
            Problem::database_unavailable().with_retry_after(Duration::from_secs(1))
        })?;
        let (place, catch_up) = match resume {
            Some(place) => (place.clone(), Some((place, delivered.place))),
            None => (delivered.place, None),
        };
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.reset();
        let subscription = Subscription {
            app: self.clone(),
            topic,
            place,
            catch_up,
            schema: delivered.schema,
            pending: VecDeque::new(),
            queue,
            _registration: registration,
            heartbeat,
            opened: false,
            token,
        };
        let chunks = futures_util::stream::unfold(subscription, |mut subscription| async move {
            let chunk = subscription.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), subscription))
        });
        let mut response = Body::from_stream(chunks).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Proxies that buffer responses (nginx) would hold the messages back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }
}

/// The resume id, as a query parameter (a client that cannot send `Last-Event-ID`).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Resume {
    /// Resume after this message id (the `id:` of the last message received); the
    /// `Last-Event-ID` header, which `EventSource` sends when it reconnects, takes precedence.
    /// Without either, the stream starts with what is new.
    after: Option<String>,
}

/// The caller's token as a query parameter, for clients that cannot set headers.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct AccessToken {
    /// The bearer token, for clients that cannot send an `Authorization` header (a browser's
    /// `EventSource`); the header takes precedence. It ends up wherever URLs are logged, so
    /// prefer the header.
    access_token: Option<String>,
}

/// `GET /v1/feed/stream`: new and deleted posts, live.
#[utoipa::path(get, path = "/v1/feed/stream", tag = "streams", params(Resume, MinPositions),
    responses((status = 200, description = "`text/event-stream`: each message has an `id:` (its resume id), an `event:` and a `data:` line with the JSON the matching read returns; a comment line comes at least every 15 s. A client that does not keep up is disconnected and resumes from its last id.", content_type = "text/event-stream", body = String), (status = 400, description = "Malformed resume id or position (`invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, streams not built yet, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn feed(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    app.stream(Topic::Feed, &query_pairs(query.as_deref())?, &headers, None)
        .await
}

/// `GET /v1/users/{user_id}/timeline/stream`: the user's home timeline, live.
#[utoipa::path(get, path = "/v1/users/{user_id}/timeline/stream", tag = "streams", params(("user_id" = Uuid, Path, description = "The user"), Resume, MinPositions),
    responses((status = 200, description = "`text/event-stream`: each message has an `id:` (its resume id), an `event:` and a `data:` line with the JSON the matching read returns; a comment line comes at least every 15 s. A client that does not keep up is disconnected and resumes from its last id.", content_type = "text/event-stream", body = String), (status = 400, description = "Malformed id, resume id or position (`validation_failed`, `invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 404, description = "No such user (`user_not_found`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, streams not built yet, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn timeline(
    State(app): State<AppState>,
    Segment(user_id): Segment,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let user_id = parse_id("user_id", &user_id)?;
    app.stream(
        Topic::Timeline(user_id),
        &query_pairs(query.as_deref())?,
        &headers,
        None,
    )
    .await
}

/// `GET /v1/me/notifications/stream`: the caller's new notifications, live.
#[utoipa::path(get, path = "/v1/me/notifications/stream", tag = "streams", params(Resume, AccessToken, MinPositions),
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`: each message has an `id:` (its resume id), an `event:` and a `data:` line with the JSON the matching read returns; a comment line comes at least every 15 s. A client that does not keep up is disconnected and resumes from its last id.", content_type = "text/event-stream", body = String), (status = 400, description = "Malformed resume id or position (`invalid_cursor`, `invalid_position`)", body = ProblemBody, content_type = "application/problem+json"), (status = 401, description = "Missing or invalid token (`unauthorized`)", body = ProblemBody, content_type = "application/problem+json"), (status = 503, description = "Read models behind `min_position`, streams not built yet, or the database unavailable (`stale_read`, `database_unavailable`)", body = ProblemBody, content_type = "application/problem+json")))]
pub(crate) async fn notifications(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let pairs = query_pairs(query.as_deref())?;
    let token = match token::bearer(&headers) {
        Ok(token) => token,
        Err(missing) if !headers.contains_key(header::AUTHORIZATION) => pairs
            .iter()
            .find(|(key, _)| key == "access_token")
            .map(|(_, token)| token.as_str())
            .ok_or(missing)?,
        Err(malformed) => return Err(malformed),
    };
    let user = app.tokens.authenticate(token).await?.user;
    let token = Some(token.to_owned());
    app.stream(Topic::Notifications(user), &pairs, &headers, token)
        .await
}
