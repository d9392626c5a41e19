//! `batch`: up to 50 commands per HTTP request; longer batches are split into
//! several requests, run in order. A request whose outcome is unknown is
//! never repeated: its commands are reported as [`CommandOutcome::Unknown`]
//! and the caller decides (BITRIX24.md §4: resend only what failed).

use std::collections::HashMap;

use serde_json::Value;

use crate::client::{BodyFormat, EncodedBody, validate_method};
use crate::references::{UnresolvedReference, prefix_references, substitute_earlier_results};
use crate::response::as_count;
use crate::retry::is_read_method;
use crate::{ApiError, ApiErrorKind, Client, Error};

/// Most commands Bitrix24 accepts in one `batch` request.
pub const MAX_BATCH_COMMANDS: usize = 50;

/// Named commands to run with `batch`. Parameters may refer to earlier
/// results with `$result[name][FIELD]`, as Bitrix24 allows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    commands: Vec<BatchCommand>,
    halt_on_error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchCommand {
    pub name: String,
    pub method: String,
    pub params: Value,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop at the first failing command (Bitrix24's `halt=1`); the rest are
    /// reported as [`CommandOutcome::NotRun`].
    pub fn halt_on_error(mut self, halt: bool) -> Self {
        self.halt_on_error = halt;
        self
    }

    /// Adds a command. Names must be unique, non-empty and free of `[`, `]`
    /// and whitespace (they appear inside `$result[..]` references).
    pub fn push(
        &mut self,
        name: impl Into<String>,
        method: &str,
        params: Value,
    ) -> Result<&mut Self, Error> {
        let name = name.into();
        if name.is_empty() || name.contains(['[', ']']) || name.chars().any(char::is_whitespace) {
            return Err(Error::Config(format!(
                "batch command name `{name}` must be non-empty, without brackets or spaces"
            )));
        }
        if self.commands.iter().any(|command| command.name == name) {
            return Err(Error::Config(format!(
                "batch command name `{name}` is used twice"
            )));
        }
        validate_method(method)?;
        if !(params.is_object() || params.is_null()) {
            return Err(Error::Config(format!(
                "parameters of batch command `{name}` must be a JSON object"
            )));
        }
        self.commands.push(BatchCommand {
            name,
            method: method.to_owned(),
            params,
        });
        Ok(self)
    }

    /// [`Batch::push`] for chaining.
    pub fn with(
        mut self,
        name: impl Into<String>,
        method: &str,
        params: Value,
    ) -> Result<Self, Error> {
        self.push(name, method, params)?;
        Ok(self)
    }

    pub fn commands(&self) -> &[BatchCommand] {
        &self.commands
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// What happened to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    Done(CommandResult),
    /// The portal ran the command and reported this error.
    Failed(ApiError),
    /// Not executed: never sent (an earlier request failed, `halt_on_error`
    /// stopped the batch, or a command it refers to did not succeed). Safe
    /// to send again.
    NotRun,
    /// Sent in a request whose outcome is unknown: it may have run.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    pub result: Value,
    pub next: Option<u64>,
    pub total: Option<u64>,
}

/// Per-command outcomes, in the order the commands were added.
#[derive(Debug)]
pub struct BatchOutcome {
    pub commands: Vec<(BatchCommand, CommandOutcome)>,
    /// Why the batch stopped early, if it did (the error of a whole request).
    pub stopped_by: Option<Error>,
    /// `batch` requests made, one per chunk of at most 50 commands (a retry
    /// of the same chunk is not counted again).
    pub requests: usize,
    halt_on_error: bool,
}

impl BatchOutcome {
    pub fn get(&self, name: &str) -> Option<&CommandOutcome> {
        self.commands
            .iter()
            .find(|(command, _)| command.name == name)
            .map(|(_, outcome)| outcome)
    }

    /// The result of a command that succeeded.
    pub fn result(&self, name: &str) -> Option<&Value> {
        match self.get(name)? {
            CommandOutcome::Done(done) => Some(&done.result),
            _ => None,
        }
    }

    /// True when every command succeeded.
    pub fn all_done(&self) -> bool {
        self.commands
            .iter()
            .all(|(_, outcome)| matches!(outcome, CommandOutcome::Done(_)))
    }

    /// The commands that surely did not run, as a new batch to send later.
    /// See [`BatchOutcome::safe_to_resend`] for how references are handled.
    pub fn not_run(&self) -> Batch {
        self.resend_batch(|outcome| *outcome == CommandOutcome::NotRun)
    }

    /// [`BatchOutcome::not_run`] plus the commands the portal refused without
    /// running them (`QUERY_LIMIT_EXCEEDED`, `OPERATION_TIME_LIMIT`): a batch
    /// that can be sent as it is. Other failures and [`CommandOutcome::Unknown`]
    /// need the caller's judgement (look the target up first).
    ///
    /// References to commands that succeeded are filled in from their
    /// results, since those commands are not sent again. Commands that refer
    /// to a command that failed or whose outcome is unknown are left out.
    pub fn safe_to_resend(&self) -> Batch {
        self.resend_batch(|outcome| match outcome {
            CommandOutcome::NotRun => true,
            CommandOutcome::Failed(error) => matches!(
                error.kind,
                ApiErrorKind::QueryLimitExceeded | ApiErrorKind::OperationTimeLimit
            ),
            CommandOutcome::Done(_) | CommandOutcome::Unknown => false,
        })
    }

    fn resend_batch(&self, resend: impl Fn(&CommandOutcome) -> bool) -> Batch {
        let left_behind: HashMap<String, Option<Value>> = self
            .commands
            .iter()
            .filter(|(_, outcome)| !resend(outcome))
            .map(|(command, outcome)| {
                let result = match outcome {
                    CommandOutcome::Done(done) => Some(done.result.clone()),
                    _ => None,
                };
                (command.name.clone(), result)
            })
            .collect();
        let commands = self
            .commands
            .iter()
            .filter(|(_, outcome)| resend(outcome))
            .filter_map(|(command, _)| {
                let params = substitute_earlier_results(&command.params, &left_behind).ok()?;
                Some(BatchCommand {
                    params,
                    ..command.clone()
                })
            })
            .collect();
        Batch {
            commands,
            halt_on_error: self.halt_on_error,
        }
    }
}

/// How the commands of a batch travel: runs of commands that survive a
/// query string share one `batch` request (at most 50 each); a command
/// holding an empty list or object goes alone as a JSON call, in its turn.
#[derive(Debug, PartialEq)]
enum Segment {
    Batch(std::ops::Range<usize>),
    Alone(usize),
}

fn segments(commands: &[BatchCommand]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = 0;
    for (index, command) in commands.iter().enumerate() {
        if survives_query_string(&command.params) {
            if index - start == MAX_BATCH_COMMANDS {
                out.push(Segment::Batch(start..index));
                start = index;
            }
            continue;
        }
        if start < index {
            out.push(Segment::Batch(start..index));
        }
        out.push(Segment::Alone(index));
        start = index + 1;
    }
    if start < commands.len() {
        out.push(Segment::Batch(start..commands.len()));
    }
    out
}

/// Whether PHP's `parse_str` gives the portal back what `params` says.
/// Inside `batch` a command is a query string, where an empty list or
/// object cannot be written: `fields[ufCrm_TAGS]=` arrives as the string
/// `""`, which a multiple field refuses and a file field does not take as
/// "remove every file". `null` is fine: it arrives as `""`, which clears a
/// single-value field.
pub fn survives_query_string(params: &Value) -> bool {
    fn nested(value: &Value) -> bool {
        match value {
            Value::Array(items) => !items.is_empty() && items.iter().all(nested),
            Value::Object(map) => !map.is_empty() && map.values().all(nested),
            _ => true,
        }
    }
    match params {
        Value::Object(map) => map.values().all(nested),
        _ => true,
    }
}

impl Client {
    /// Runs a batch, split into requests of at most [`MAX_BATCH_COMMANDS`].
    /// A reference to a command sent in an earlier request is filled in here
    /// from its result, the way Bitrix24 fills in references itself (only
    /// `$result[..]`, in parameter values). Each request follows the rules of
    /// [`Client::call`]; a batch counts as a read only when every command is.
    ///
    /// A command whose parameters hold an empty list or object (clearing a
    /// multiple field: `"ufCrm_TAGS": []`) cannot travel inside `batch`
    /// (see [`survives_query_string`]): it is sent on its own as a JSON
    /// call, in its place in the order, and counts as one more request.
    pub async fn batch(&self, batch: &Batch) -> BatchOutcome {
        let mut outcomes: Vec<CommandOutcome> = vec![CommandOutcome::NotRun; batch.len()];
        let mut earlier: HashMap<String, Option<Value>> = HashMap::new();
        let mut stopped_by = None;
        let mut requests = 0;
        let mut halted = false;
        for segment in segments(&batch.commands) {
            if halted || stopped_by.is_some() {
                break;
            }
            let range = match &segment {
                Segment::Batch(range) => range.clone(),
                Segment::Alone(index) => *index..*index + 1,
            };
            // A segment that may share a request with other callers' batches
            // gets its names (and references to them) prefixed.
            let shared = match (&segment, &self.inner.coalescer) {
                (Segment::Batch(_), Some(coalescer)) if !batch.halt_on_error => {
                    Some((coalescer, coalescer.ticket()))
                }
                _ => None,
            };
            let prefix = shared
                .as_ref()
                .map_or_else(String::new, |(_, t)| t.prefix.clone());
            let prefix = prefix.as_str();
            let names: std::collections::HashSet<&str> = batch.commands[range.clone()]
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            let mut cmd: Vec<(String, String)> = Vec::new();
            let mut sent = Vec::new();
            let mut alone_params = None;
            for index in range.clone() {
                let command = &batch.commands[index];
                match substitute_earlier_results(&command.params, &earlier) {
                    Ok(params) => {
                        let line = if prefix.is_empty() {
                            command_line(command, &params)
                        } else {
                            command_line(command, &prefix_references(&params, &names, prefix))
                        };
                        cmd.push((format!("{prefix}{}", command.name), line));
                        alone_params = Some(params);
                        sent.push(index);
                    }
                    Err(UnresolvedReference(missing)) => {
                        tracing::debug!(
                            command = %command.name,
                            refers_to = %missing,
                            "batch command not sent: it refers to a command that did not succeed"
                        );
                        outcomes[index] = CommandOutcome::NotRun;
                    }
                }
            }
            if !sent.is_empty() {
                requests += 1;
                match (&segment, alone_params) {
                    (Segment::Alone(index), Some(params)) => {
                        let command = &batch.commands[*index];
                        match self.call(&command.method, &params).await {
                            Ok(response) => {
                                outcomes[*index] = CommandOutcome::Done(CommandResult {
                                    result: response.result,
                                    next: response.next,
                                    total: response.total,
                                });
                            }
                            Err(Error::Api(api)) => {
                                halted = batch.halt_on_error;
                                outcomes[*index] = CommandOutcome::Failed(api);
                            }
                            Err(error) => {
                                outcomes[*index] = if error.may_have_executed() {
                                    CommandOutcome::Unknown
                                } else {
                                    CommandOutcome::NotRun
                                };
                                stopped_by = Some(error);
                            }
                        }
                    }
                    _ => {
                        let read_only = sent
                            .iter()
                            .all(|&i| is_read_method(&batch.commands[i].method));
                        let answer = match shared {
                            Some((coalescer, ticket)) => {
                                coalescer.send(self, ticket, cmd, read_only).await
                            }
                            None => {
                                let body = batch_body(batch.halt_on_error, &cmd);
                                self.execute("batch", &body, read_only)
                                    .await
                                    .map(std::sync::Arc::new)
                            }
                        };
                        match answer {
                            Ok(response) => {
                                for &i in &sent {
                                    let outcome = command_outcome(
                                        self.portal(),
                                        &batch.commands[i],
                                        &format!("{prefix}{}", batch.commands[i].name),
                                        &response.result,
                                    );
                                    if matches!(outcome, CommandOutcome::Failed(_))
                                        && batch.halt_on_error
                                    {
                                        halted = true;
                                    }
                                    outcomes[i] = outcome;
                                }
                            }
                            Err(error) => {
                                let outcome = if error.may_have_executed() {
                                    CommandOutcome::Unknown
                                } else {
                                    CommandOutcome::NotRun
                                };
                                for &i in &sent {
                                    outcomes[i] = outcome.clone();
                                }
                                stopped_by = Some(error);
                            }
                        }
                    }
                }
            }
            for index in range {
                let result = match &outcomes[index] {
                    CommandOutcome::Done(done) => Some(done.result.clone()),
                    _ => None,
                };
                earlier.insert(batch.commands[index].name.clone(), result);
            }
        }
        BatchOutcome {
            commands: batch.commands.iter().cloned().zip(outcomes).collect(),
            stopped_by,
            requests,
            halt_on_error: batch.halt_on_error,
        }
    }
}

/// `{"halt":0,"cmd":{"name":"method?query",..}}` with the commands in the
/// order they were added: Bitrix24 runs them in body order, and
/// `serde_json::Map` would sort them by name.
pub(crate) fn batch_body<'a>(
    halt_on_error: bool,
    cmd: impl IntoIterator<Item = &'a (String, String)>,
) -> EncodedBody {
    let mut body = format!("{{\"halt\":{},\"cmd\":{{", u8::from(halt_on_error));
    for (index, (name, line)) in cmd.into_iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(&Value::from(name.as_str()).to_string());
        body.push(':');
        body.push_str(&Value::from(line.as_str()).to_string());
    }
    body.push_str("}}");
    EncodedBody {
        bytes: body.into_bytes(),
        format: BodyFormat::Json,
    }
}

/// `method?query` as Bitrix24 parses it with PHP's `parse_str`.
fn command_line(command: &BatchCommand, params: &Value) -> String {
    let query = b24_phpform::encode(params);
    if query.is_empty() {
        command.method.clone()
    } else {
        format!("{}?{query}", command.method)
    }
}

/// Reads one command's outcome from the `batch` result, whose parts are
/// objects keyed by command name, or lists when PHP saw integer-like names.
/// `name` is the command's name on the wire (with a shared request's prefix).
fn command_outcome(
    portal: &str,
    command: &BatchCommand,
    name: &str,
    batch_result: &Value,
) -> CommandOutcome {
    let part = |key: &str| batch_result.get(key).and_then(|part| entry(part, name));
    if let Some(error) = part("result_error") {
        let code = error
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN_ERROR")
            .to_owned();
        return CommandOutcome::Failed(ApiError {
            kind: ApiErrorKind::from_code(&code),
            description: error
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            code,
            status: 200,
            method: command.method.clone(),
            portal: portal.to_owned(),
            retry_at: None,
        });
    }
    match part("result") {
        Some(result) => CommandOutcome::Done(CommandResult {
            result: result.clone(),
            next: part("result_next").and_then(as_count),
            total: part("result_total").and_then(as_count),
        }),
        // Skipped by halt=1 after an earlier failure.
        None => CommandOutcome::NotRun,
    }
}

fn entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    match container {
        Value::Object(map) => map.get(name),
        Value::Array(items) => name.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn command(name: &str, method: &str) -> BatchCommand {
        BatchCommand {
            name: name.into(),
            method: method.into(),
            params: Value::Null,
        }
    }

    #[test]
    fn validates_commands() {
        let mut batch = Batch::new();
        batch
            .push("deal", "crm.item.get", json!({"entityTypeId": 2, "id": 1}))
            .unwrap();
        assert!(batch.push("deal", "crm.item.get", Value::Null).is_err());
        assert!(batch.push("", "crm.item.get", Value::Null).is_err());
        assert!(batch.push("a[b]", "crm.item.get", Value::Null).is_err());
        assert!(batch.push("a b", "crm.item.get", Value::Null).is_err());
        assert!(batch.push("ok", "crm.item.get?x=1", Value::Null).is_err());
        assert!(batch.push("ok", "crm.item.get", json!([1])).is_err());
        assert_eq!(batch.len(), 1);
    }

    fn outcome_of(entries: Vec<(BatchCommand, CommandOutcome)>) -> BatchOutcome {
        BatchOutcome {
            commands: entries,
            stopped_by: None,
            requests: 1,
            halt_on_error: false,
        }
    }

    fn failed(kind_code: &str) -> CommandOutcome {
        CommandOutcome::Failed(ApiError {
            kind: ApiErrorKind::from_code(kind_code),
            code: kind_code.into(),
            description: String::new(),
            status: 200,
            method: "crm.item.add".into(),
            portal: "p".into(),
            retry_at: None,
        })
    }

    #[test]
    fn resend_batches_fill_in_results_of_commands_that_are_not_resent() {
        let with = |name: &str, params: Value| BatchCommand {
            name: name.into(),
            method: "crm.item.add".into(),
            params,
        };
        let outcome = outcome_of(vec![
            (
                with("contact", Value::Null),
                CommandOutcome::Done(CommandResult {
                    result: json!(41),
                    next: None,
                    total: None,
                }),
            ),
            (with("lost", Value::Null), CommandOutcome::Unknown),
            (
                with("limited", json!({"c": "$result[contact]"})),
                failed("QUERY_LIMIT_EXCEEDED"),
            ),
            (with("denied", Value::Null), failed("ACCESS_DENIED")),
            (
                with(
                    "deal",
                    json!({"contactId": "$result[contact]", "after": "$result[limited]"}),
                ),
                CommandOutcome::NotRun,
            ),
            (
                with("needs_lost", json!({"x": "$result[lost][ID]"})),
                CommandOutcome::NotRun,
            ),
            (
                with("comment", json!({"text": "contact $result[contact]"})),
                CommandOutcome::NotRun,
            ),
        ]);

        // `deal` refers to `limited`, which failed and is not in this batch.
        let not_run = outcome.not_run();
        let names: Vec<&str> = not_run.commands().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["comment"]);
        assert_eq!(not_run.commands()[0].params, json!({"text": "contact 41"}));

        let safe = outcome.safe_to_resend();
        let names: Vec<&str> = safe.commands().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["limited", "deal", "comment"]);
        assert_eq!(safe.commands()[0].params, json!({"c": 41}));
        // `limited` is resent in the same batch: its reference is for the portal.
        assert_eq!(
            safe.commands()[1].params,
            json!({"contactId": 41, "after": "$result[limited]"})
        );
    }

    #[test]
    fn commands_with_empty_lists_travel_alone_in_their_place() {
        let with = |name: &str, params: Value| BatchCommand {
            name: name.into(),
            method: "crm.item.update".into(),
            params,
        };
        let commands = vec![
            with("a", json!({"fields": {"title": "x", "comments": null}})),
            with("b", json!({"fields": {"ufCrm_TAGS": []}})),
            with("c", json!({"id": 1})),
            with("d", json!({"fields": {"fm": {}}})),
        ];
        assert_eq!(
            segments(&commands),
            vec![
                Segment::Batch(0..1),
                Segment::Alone(1),
                Segment::Batch(2..3),
                Segment::Alone(3)
            ]
        );
        assert!(survives_query_string(&json!({})));
        assert!(survives_query_string(
            &json!({"a": null, "b": [1], "c": {"d": "e"}})
        ));
        assert!(!survives_query_string(&json!({"rows": []})));
        let many: Vec<BatchCommand> = (0..120)
            .map(|i| with(&format!("c{i}"), json!({"id": i})))
            .collect();
        assert_eq!(
            segments(&many),
            vec![
                Segment::Batch(0..50),
                Segment::Batch(50..100),
                Segment::Batch(100..120)
            ]
        );
    }

    #[test]
    fn batch_body_keeps_the_command_order() {
        let cmd = vec![
            (
                "z_contact".to_owned(),
                "crm.contact.add?fields[NAME]=A".to_owned(),
            ),
            (
                "a_deal".to_owned(),
                "crm.item.add?fields[contactId]=%24result%5Bz_contact%5D".to_owned(),
            ),
        ];
        let body = batch_body(true, &cmd);
        assert_eq!(
            String::from_utf8(body.bytes).unwrap(),
            r#"{"halt":1,"cmd":{"z_contact":"crm.contact.add?fields[NAME]=A","a_deal":"crm.item.add?fields[contactId]=%24result%5Bz_contact%5D"}}"#
        );
    }

    #[test]
    fn command_lines_use_php_form_encoding() {
        let command = BatchCommand {
            name: "c".into(),
            method: "crm.item.add".into(),
            params: Value::Null,
        };
        let params = json!({"entityTypeId": 2, "fields": {"contactIds": ["$result[contact]"], "title": "A & B"}});
        assert_eq!(
            command_line(&command, &params),
            "crm.item.add?entityTypeId=2&fields[contactIds][0]=%24result%5Bcontact%5D&fields[title]=A%20%26%20B"
        );
        assert_eq!(command_line(&command, &Value::Null), "crm.item.add");
    }

    #[test]
    fn reads_results_errors_and_skipped_commands() {
        let result = json!({
            "result": {"list": [{"ID": "1"}], "get": {"ID": "7"}},
            "result_error": {"bad": {"error": "NOT_FOUND", "error_description": "Not found"}},
            "result_total": {"list": 120},
            "result_next": {"list": 50},
        });
        assert_eq!(
            command_outcome("p", &command("list", "crm.deal.list"), "list", &result),
            CommandOutcome::Done(CommandResult {
                result: json!([{"ID": "1"}]),
                next: Some(50),
                total: Some(120)
            })
        );
        let CommandOutcome::Failed(error) =
            command_outcome("p", &command("bad", "crm.item.get"), "bad", &result)
        else {
            panic!("expected a failure")
        };
        assert_eq!(
            (error.kind, error.description.as_str()),
            (ApiErrorKind::NotFound, "Not found")
        );
        assert_eq!(
            command_outcome("p", &command("skipped", "crm.item.get"), "skipped", &result),
            CommandOutcome::NotRun
        );
    }

    #[test]
    fn reads_list_shaped_parts_from_integer_names() {
        let result = json!({"result": ["zero", "one"], "result_error": []});
        assert_eq!(
            command_outcome("p", &command("1", "crm.item.get"), "1", &result),
            CommandOutcome::Done(CommandResult {
                result: json!("one"),
                next: None,
                total: None
            })
        );
    }
}
