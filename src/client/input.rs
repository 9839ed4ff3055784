//! Typed lines of the interactive client (`/join`, `/history`, …) and the message ids it
//! sends.
//!
//! Pure: a line in, an [`Input`] out. Names are checked here with the wire codec's own
//! rules, so a typo is told to the person instead of earning a `bad_request`.

use crate::wire::client::{check_room, HISTORY_LIMIT_MAX};

/// Lines `/history` prints when given no count: one screenful.
pub const HISTORY_LINES_DEFAULT: usize = 20;

pub const HELP: &str = "\
commands:
  /join ROOM      join a room and type into it
  /leave ROOM     leave a room
  /room ROOM      type into another joined room
  /history [N]    the last N messages of the current room (default 20)
  /who            members of the current room
  /quit           leave (also Ctrl-C, Ctrl-D)
  /help           this text
any other line is sent to the current room; start it with // to send a leading /";

/// What a typed line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Nothing (a blank line).
    Empty,
    /// Text to send to the current room.
    Say(String),
    Join(String),
    Leave(String),
    Room(String),
    History(usize),
    Who,
    Quit,
    Help,
    /// Not understood; the text says why.
    Invalid(String),
}

pub fn parse_input(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    if let Some(escaped) = line.strip_prefix("//") {
        return Input::Say(format!("/{escaped}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Say(line.to_string());
    };
    let mut words = command.split_whitespace();
    let name = words.next().unwrap_or("");
    let argument = words.next();
    if words.next().is_some() {
        return Input::Invalid(format!("/{name}: too many arguments"));
    }
    let room = |make: fn(String) -> Input| match argument {
        None => Input::Invalid(format!("/{name} needs a room name")),
        Some(room) => match check_room(room) {
            Ok(()) => make(room.to_string()),
            Err(e) => Input::Invalid(format!("/{name}: {e}")),
        },
    };
    let bare = |input: Input| match argument {
        None => input,
        Some(_) => Input::Invalid(format!("/{name} takes no argument")),
    };
    match name {
        "join" | "j" => room(Input::Join),
        "leave" | "part" => room(Input::Leave),
        "room" => room(Input::Room),
        "history" => match argument.map(str::parse::<usize>) {
            None => Input::History(HISTORY_LINES_DEFAULT),
            Some(Ok(count)) if (1..=HISTORY_LIMIT_MAX).contains(&count) => Input::History(count),
            Some(_) => Input::Invalid(format!(
                "/history takes a count from 1 to {HISTORY_LIMIT_MAX}"
            )),
        },
        "who" => bare(Input::Who),
        "quit" | "exit" => bare(Input::Quit),
        "help" | "?" => bare(Input::Help),
        _ => Input::Invalid(format!("unknown command /{name}; /help lists them")),
    }
}

/// Message ids of one process: `<prefix><n>`, n counting from 1. `pbchat-client` gives the
/// prefix a random part, so that ids are unique per nick across processes: an earlier
/// process's `m-1` in a reused session would be taken for a resend and dropped, and the
/// copy rule of the client recipe knows a message by sender and id.
#[derive(Debug)]
pub struct MessageIds {
    prefix: String,
    next: u64,
}

impl MessageIds {
    pub fn new(prefix: impl Into<String>) -> Self {
        MessageIds {
            prefix: prefix.into(),
            next: 1,
        }
    }

    pub fn next_id(&mut self) -> String {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_input("/join general"), Input::Join("general".into()));
        assert_eq!(parse_input("/leave  a.b#c "), Input::Leave("a.b#c".into()));
        assert_eq!(parse_input("/room x"), Input::Room("x".into()));
        assert_eq!(
            parse_input("/history"),
            Input::History(HISTORY_LINES_DEFAULT)
        );
        assert_eq!(parse_input("/history 5"), Input::History(5));
        assert_eq!(parse_input("/who"), Input::Who);
        assert_eq!(parse_input("/quit"), Input::Quit);
        assert_eq!(parse_input("/help"), Input::Help);
        assert_eq!(parse_input("   "), Input::Empty);
    }

    #[test]
    fn text_is_said_as_typed() {
        assert_eq!(
            parse_input("hello there "),
            Input::Say("hello there ".into())
        );
        assert_eq!(parse_input("//me waves"), Input::Say("/me waves".into()));
    }

    #[test]
    fn mistakes_are_explained() {
        for bad in [
            "/join",
            "/join bad room",
            "/join no/slash",
            "/history 0",
            "/history lots",
            "/history 1001",
            "/who me",
            "/dance",
        ] {
            assert!(matches!(parse_input(bad), Input::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn ids_count_up_from_one() {
        let mut ids = MessageIds::new("m-");
        assert_eq!(ids.next_id(), "m-1");
        assert_eq!(ids.next_id(), "m-2");
        let mut ids = MessageIds::new("m-ab12-");
        assert_eq!(ids.next_id(), "m-ab12-1");
    }
}
