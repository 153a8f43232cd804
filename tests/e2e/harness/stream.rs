//! A client of the live streams (server-sent events), parsing them as the WHATWG
//! specification says `EventSource` does: fields up to a blank line, comment lines skipped, the
//! last event id kept from any block that names one, a block without data dispatching nothing.

use std::time::Duration;

use serde_json::Value;

use super::TestApp;

/// One block of a stream, as received.
#[derive(Debug, Clone)]
pub(crate) enum Block {
    /// A message: its `event:` and parsed `data:` (its `id:` is in [`EventStream::last_id`]).
    Message { event: String, data: Value },
    /// Comment lines (a heartbeat).
    Comment,
}

/// An open stream.
pub(crate) struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// The last id any block set: what `Last-Event-ID` would say on a reconnect.
    pub(crate) last_id: Option<String>,
}

impl TestApp {
    /// Opens the stream at `path` of the query API, resuming after `last_id` (sent as
    /// `Last-Event-ID`) with `token` as the bearer, asserting 200 and `text/event-stream`.
    pub(crate) async fn open_stream(
        &self,
        path: &str,
        last_id: Option<&str>,
        token: Option<&str>,
    ) -> EventStream {
        let mut request = self.query(path);
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .unwrap_or_else(|err| panic!("cannot open stream {path}: {err}"));
        let status = response.status();
        if status != 200 {
            let body = response.text().await.unwrap_or_default();
            panic!("stream {path} answered {status}: {body}");
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "text/event-stream", "stream {path}");
        EventStream {
            response,
            buffer: Vec::new(),
            last_id: last_id.map(str::to_owned),
        }
    }
}

impl EventStream {
    /// The next block, waiting at most `within`; `None` when the stream ended or the time ran
    /// out.
    pub(crate) async fn next_block(&mut self, within: Duration) -> Option<Block> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("a stream is UTF-8");
                if let Some(block) = self.parse(&block) {
                    return Some(block);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next message, skipping comments; `None` when the stream ended or `within` ran out.
    pub(crate) async fn next_message(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_block(left).await? {
                Block::Message { event, data } => return Some((event, data)),
                Block::Comment => {}
            }
        }
    }

    /// Whether the server ends the stream within `within` (whatever it sends before).
    pub(crate) async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return true,
            }
        }
    }

    /// Every message until the next heartbeat, which the server sends only when it has nothing
    /// else queued: what the hub had handed out for this stream by then has arrived.
    pub(crate) async fn messages_until_heartbeat(
        &mut self,
        within: Duration,
    ) -> Vec<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut messages = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_block(left).await {
                Some(Block::Message { event, data }) => messages.push((event, data)),
                Some(Block::Comment) => return messages,
                None => panic!("the stream ended or sent no heartbeat within {within:?}"),
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Block> {
        let (mut id, mut event, mut data, mut comment) = (None, None, Vec::new(), false);
        for line in block.lines() {
            if line.starts_with(':') {
                comment = true;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        if data.is_empty() {
            return comment.then_some(Block::Comment);
        }
        let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
        Some(Block::Message {
            event: event.unwrap_or_else(|| "message".to_owned()),
            data,
        })
    }
}
