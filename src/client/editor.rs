//! The line editor of the interactive client: keys in, one edited line out, drawn on a
//! single terminal row however long the line grows.
//!
//! Pure: bytes from the terminal become [`Key`]s ([`KeyDecoder`]), keys edit a
//! [`LineEditor`], and [`LineEditor::render`] says what the row shows and where the cursor
//! stands. Reading the terminal and writing to it is `terminal`'s job.
//!
//! A line wider than the row scrolls sideways: the row shows the part around the cursor,
//! with `<` at its left edge when text is hidden before, and `>` at its right edge when
//! text is hidden after. It never wraps onto a second row: a line editor that wraps must
//! move the cursor back up to redraw, which no terminal can do past rows that have
//! scrolled off the screen, and a 5000-character paste then redrew itself as a dozen
//! growing copies (issue 15).

use std::collections::VecDeque;

use unicode_width::UnicodeWidthChar;

/// Longest line the editor holds, in characters: the largest body a node can be
/// configured to take (`client.max_body_bytes` is at most 1 MiB), so that no line a node
/// could accept is cut. Characters typed beyond it are refused with a bell.
pub const LINE_CHARS_MAX: usize = 1 << 20;

/// Lines kept for Up and Down: a long session's worth of typing.
pub const HISTORY_LINES_MAX: usize = 500;

/// Longest line kept in the history: a pasted wall of text is not worth recalling, and
/// [`HISTORY_LINES_MAX`] of them would hold memory for nothing.
pub const HISTORY_LINE_CHARS_MAX: usize = 4_096;

/// Fewest cells the edited text gets, the prompt dropped if need be: the sideways scroll
/// needs room for both markers and the cursor, and fewer would be unreadable anyway.
pub const TEXT_CELLS_MIN: usize = 8;

/// Parameter bytes of an escape sequence kept before it is dropped as garbage: real keys
/// send a handful (`ESC [ 1 ; 5 D`, `ESC [ 2 0 0 ~`).
pub const ESCAPE_PARAMS_MAX: usize = 16;

/// What a key press asks of the editor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A character to insert; never a control character.
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    /// Ctrl-Left, Alt-B: to the start of the word before the cursor.
    WordLeft,
    /// Ctrl-Right, Alt-F: to the end of the word after the cursor.
    WordRight,
    Home,
    End,
    /// Up, Ctrl-P: the previous line of the history.
    Up,
    /// Down, Ctrl-N: the next line of the history.
    Down,
    /// Ctrl-U
    DeleteToStart,
    /// Ctrl-K
    DeleteToEnd,
    /// Ctrl-W, Alt-Backspace
    DeleteWordBefore,
    /// Ctrl-C
    Interrupt,
    /// Ctrl-D: leave on an empty line, else delete under the cursor.
    EndOfInput,
    /// Ctrl-L
    Redraw,
}

#[derive(Debug, Default)]
enum DecodeState {
    #[default]
    Ground,
    /// After `ESC`.
    Escape,
    /// After `ESC [`: the parameter bytes so far (at most [`ESCAPE_PARAMS_MAX`]), or
    /// `None` once too many came and the rest up to the final byte is skipped.
    Csi(Option<Vec<u8>>),
    /// After `ESC O`.
    Ss3,
    /// Inside a UTF-8 sequence: the bytes so far and how many it has.
    Utf8 {
        bytes: [u8; 4],
        have: usize,
        need: usize,
    },
}

/// Turns the bytes a terminal sends into [`Key`]s. A key split across two reads is put
/// together; bytes that make no key are dropped.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    state: DecodeState,
    /// Inside a bracketed paste (`ESC [ 200 ~` … `ESC [ 201 ~`): line breaks and tabs
    /// insert spaces and no other control acts, so a pasted text is edited as one line
    /// and never sends itself line by line.
    pasting: bool,
}

impl KeyDecoder {
    pub fn new() -> Self {
        KeyDecoder::default()
    }

    /// Decodes `bytes`, appending the keys they complete to `keys`.
    pub fn feed(&mut self, bytes: &[u8], keys: &mut Vec<Key>) {
        for &byte in bytes {
            self.byte(byte, keys);
        }
    }

    fn byte(&mut self, byte: u8, keys: &mut Vec<Key>) {
        match std::mem::take(&mut self.state) {
            DecodeState::Ground => self.ground(byte, keys),
            DecodeState::Escape => match byte {
                b'[' => self.state = DecodeState::Csi(Some(Vec::new())),
                b'O' => self.state = DecodeState::Ss3,
                0x1b => self.state = DecodeState::Escape,
                _ if self.pasting => {}
                0x7f | 0x08 => keys.push(Key::DeleteWordBefore),
                b'b' => keys.push(Key::WordLeft),
                b'f' => keys.push(Key::WordRight),
                // Other Alt- keys mean nothing here.
                _ => {}
            },
            DecodeState::Csi(params) => match byte {
                0x20..=0x3f => {
                    self.state = DecodeState::Csi(params.and_then(|mut params| {
                        params.push(byte);
                        (params.len() <= ESCAPE_PARAMS_MAX).then_some(params)
                    }))
                }
                0x40..=0x7e => {
                    if let Some(params) = params {
                        self.csi(&params, byte, keys);
                    }
                }
                // A control inside a sequence: the sequence was garbage.
                _ => {}
            },
            DecodeState::Ss3 => {
                if !self.pasting {
                    keys.extend(cursor_key(byte, false));
                }
            }
            DecodeState::Utf8 {
                mut bytes,
                mut have,
                need,
            } => {
                if byte & 0xc0 != 0x80 {
                    // Cut short: drop it, and read this byte afresh.
                    self.ground(byte, keys);
                    return;
                }
                bytes[have] = byte;
                have += 1;
                if have < need {
                    self.state = DecodeState::Utf8 { bytes, have, need };
                    return;
                }
                if let Some(c) = std::str::from_utf8(&bytes[..need])
                    .ok()
                    .and_then(|text| text.chars().next())
                {
                    if !c.is_control() {
                        keys.push(Key::Char(c));
                    }
                }
            }
        }
    }

    fn ground(&mut self, byte: u8, keys: &mut Vec<Key>) {
        let key = match byte {
            0x1b => {
                self.state = DecodeState::Escape;
                return;
            }
            0x20..=0x7e => Key::Char(byte as char),
            0xc2..=0xf4 => {
                let need = match byte {
                    0xc2..=0xdf => 2,
                    0xe0..=0xef => 3,
                    _ => 4,
                };
                let mut bytes = [0; 4];
                bytes[0] = byte;
                self.state = DecodeState::Utf8 {
                    bytes,
                    have: 1,
                    need,
                };
                return;
            }
            b'\r' | b'\n' | b'\t' if self.pasting => Key::Char(' '),
            _ if self.pasting => return,
            b'\r' | b'\n' => Key::Enter,
            0x7f | 0x08 => Key::Backspace,
            0x01 => Key::Home,
            0x02 => Key::Left,
            0x03 => Key::Interrupt,
            0x04 => Key::EndOfInput,
            0x05 => Key::End,
            0x06 => Key::Right,
            0x0b => Key::DeleteToEnd,
            0x0c => Key::Redraw,
            0x0e => Key::Down,
            0x10 => Key::Up,
            0x15 => Key::DeleteToStart,
            0x17 => Key::DeleteWordBefore,
            // Other controls, and bytes that start no UTF-8 character.
            _ => return,
        };
        keys.push(key);
    }

    /// A complete `ESC [ params final` sequence.
    fn csi(&mut self, params: &[u8], last: u8, keys: &mut Vec<Key>) {
        if last == b'~' {
            match params {
                b"200" => self.pasting = true,
                b"201" => self.pasting = false,
                _ if self.pasting => {}
                b"1" | b"7" => keys.push(Key::Home),
                b"4" | b"8" => keys.push(Key::End),
                b"3" => keys.push(Key::Delete),
                _ => {}
            }
            return;
        }
        if self.pasting {
            return;
        }
        // `1;5` is Ctrl, `1;3` Alt: both move by words.
        let by_word = matches!(params, b"1;5" | b"1;3" | b"5" | b"3");
        keys.extend(cursor_key(last, by_word));
    }
}

/// The key of the final byte of a cursor-key sequence (`ESC [ C`, `ESC O C`, …).
fn cursor_key(last: u8, by_word: bool) -> Option<Key> {
    Some(match (last, by_word) {
        (b'A', _) => Key::Up,
        (b'B', _) => Key::Down,
        (b'C', false) => Key::Right,
        (b'C', true) => Key::WordRight,
        (b'D', false) => Key::Left,
        (b'D', true) => Key::WordLeft,
        (b'H', _) => Key::Home,
        (b'F', _) => Key::End,
        _ => return None,
    })
}

/// What a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    /// The line or the cursor may have changed: draw the row again.
    Edited,
    /// Refused (the line is at [`LINE_CHARS_MAX`]): ring the bell.
    Bell,
    /// Enter: the line typed, which the editor has cleared.
    Submit(String),
    /// Ctrl-C, or Ctrl-D on an empty line.
    Quit,
    /// Ctrl-L: clear the screen, then draw the row.
    ClearScreen,
}

/// What the row shows: `text` (prompt, markers and the visible part of the line, never
/// wider than the terminal less its last column) and the column of the cursor in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub text: String,
    pub cursor: usize,
}

/// The line being typed, its cursor, and the lines typed before.
#[derive(Debug, Default)]
pub struct LineEditor {
    /// At most [`LINE_CHARS_MAX`] characters, none of them a control character.
    line: Vec<char>,
    /// Where typing inserts: `0..=line.len()`.
    cursor: usize,
    /// Lines submitted, oldest first: at most [`HISTORY_LINES_MAX`], each at most
    /// [`HISTORY_LINE_CHARS_MAX`] characters.
    history: VecDeque<Vec<char>>,
    /// While Up and Down browse the history: the index shown, and the line that was being
    /// typed, which Down past the newest brings back.
    browsing: Option<(usize, Vec<char>)>,
    /// The first column of the line the row showed last; kept, so that the row does not
    /// jump at each key but only when the cursor would leave it.
    scroll: usize,
}

impl LineEditor {
    pub fn new() -> Self {
        LineEditor::default()
    }

    /// The line as typed so far.
    pub fn line(&self) -> String {
        self.line.iter().collect()
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn on_key(&mut self, key: Key) -> Edit {
        match key {
            Key::Char(c) => {
                if self.line.len() >= LINE_CHARS_MAX {
                    return Edit::Bell;
                }
                self.line.insert(self.cursor, c);
                self.cursor += 1;
            }
            Key::Enter => {
                let line: String = std::mem::take(&mut self.line).into_iter().collect();
                self.cursor = 0;
                self.scroll = 0;
                self.browsing = None;
                self.remember(&line);
                return Edit::Submit(line);
            }
            Key::Backspace => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.line.remove(self.cursor);
                }
            }
            Key::Delete => {
                if self.cursor < self.line.len() {
                    self.line.remove(self.cursor);
                }
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.line.len()),
            Key::WordLeft => self.cursor = self.word_start_before(),
            Key::WordRight => self.cursor = self.word_end_after(),
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.line.len(),
            Key::Up => self.older(),
            Key::Down => self.newer(),
            Key::DeleteToStart => {
                self.line.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::DeleteToEnd => self.line.truncate(self.cursor),
            Key::DeleteWordBefore => {
                let from = self.word_start_before();
                self.line.drain(from..self.cursor);
                self.cursor = from;
            }
            Key::Interrupt => return Edit::Quit,
            Key::EndOfInput if self.line.is_empty() => return Edit::Quit,
            Key::EndOfInput => return self.on_key(Key::Delete),
            Key::Redraw => return Edit::ClearScreen,
        }
        Edit::Edited
    }

    /// The row for the line after `prompt` on a terminal `columns` wide, scrolled so that
    /// the cursor shows.
    pub fn render(&mut self, prompt: &str, columns: usize) -> Row {
        let (row, scroll) = render_row(prompt, &self.line, self.cursor, columns, self.scroll);
        self.scroll = scroll;
        row
    }

    fn word_start_before(&self) -> usize {
        let mut at = self.cursor;
        while at > 0 && self.line[at - 1].is_whitespace() {
            at -= 1;
        }
        while at > 0 && !self.line[at - 1].is_whitespace() {
            at -= 1;
        }
        at
    }

    fn word_end_after(&self) -> usize {
        let mut at = self.cursor;
        while at < self.line.len() && self.line[at].is_whitespace() {
            at += 1;
        }
        while at < self.line.len() && !self.line[at].is_whitespace() {
            at += 1;
        }
        at
    }

    fn remember(&mut self, line: &str) {
        let chars: Vec<char> = line.chars().collect();
        if line.trim().is_empty()
            || chars.len() > HISTORY_LINE_CHARS_MAX
            || self.history.back() == Some(&chars)
        {
            return;
        }
        if self.history.len() == HISTORY_LINES_MAX {
            self.history.pop_front();
        }
        self.history.push_back(chars);
    }

    fn older(&mut self) {
        let index = match &self.browsing {
            None if self.history.is_empty() => return,
            None => self.history.len() - 1,
            Some((0, _)) => return,
            Some((index, _)) => index - 1,
        };
        let draft = match self.browsing.take() {
            Some((_, draft)) => draft,
            None => std::mem::take(&mut self.line),
        };
        self.browsing = Some((index, draft));
        self.line = self.history[index].clone();
        self.cursor = self.line.len();
    }

    fn newer(&mut self) {
        let Some((index, draft)) = self.browsing.take() else {
            return;
        };
        if index + 1 < self.history.len() {
            self.line = self.history[index + 1].clone();
            self.browsing = Some((index + 1, draft));
        } else {
            self.line = draft;
        }
        self.cursor = self.line.len();
    }
}

/// Cells a text takes on a terminal (a CJK character takes two, a combining mark none).
pub fn text_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// The row showing `line` after `prompt` with the cursor at `cursor` (a character index),
/// on a terminal `columns` wide, and the first column of the line it shows. `scroll` is
/// that column at the last draw: kept while the cursor stays in view.
pub fn render_row(
    prompt: &str,
    line: &[char],
    cursor: usize,
    columns: usize,
    scroll: usize,
) -> (Row, usize) {
    assert!(cursor <= line.len(), "the cursor is within the line");
    // The last column stays empty: a character written there leaves the terminal waiting
    // to wrap, and some terminals wrap at the next output.
    let usable = columns.saturating_sub(1);
    let prompt_cells = text_width(prompt);
    let (prompt, width) = if prompt_cells + TEXT_CELLS_MIN <= usable {
        (prompt, usable - prompt_cells)
    } else {
        ("", usable.max(TEXT_CELLS_MIN))
    };
    let prompt_cells = text_width(prompt);
    // Column where each character starts; the last entry is where the line ends.
    let mut starts = Vec::with_capacity(line.len() + 1);
    let mut column = 0;
    for &c in line {
        starts.push(column);
        column += char_width(c);
    }
    starts.push(column);
    // One more column than the text: the cursor may stand after its end.
    let length = column + 1;
    let cursor_column = starts[cursor];
    let first = window(length, cursor_column, width, scroll);
    let (left, cells, right) = visible_cells(length, first, width);
    let end = first + cells;
    let mut text = String::with_capacity(prompt.len() + cells + 2);
    text.push_str(prompt);
    if left {
        text.push('<');
    }
    for (index, &c) in line.iter().enumerate() {
        let (from, to) = (starts[index], starts[index + 1]);
        if from >= end {
            break;
        }
        if from == to {
            // Zero width: it marks the character before it, shown when that one is.
            if from > first || (from == 0 && first == 0) {
                text.push(c);
            }
        } else if from >= first && to <= end {
            text.push(c);
        } else if to > first {
            // A wide character cut by an edge: blanks for the part in view.
            let shown = to.min(end) - from.max(first);
            text.extend(std::iter::repeat_n(' ', shown));
        }
    }
    if right {
        // Pad to the edge, where the marker goes.
        let shown = text_width(&text);
        let edge = prompt_cells + usize::from(left) + cells;
        text.extend(std::iter::repeat_n(' ', edge.saturating_sub(shown)));
        text.push('>');
    }
    let row = Row {
        text,
        cursor: prompt_cells + usize::from(left) + (cursor_column - first),
    };
    (row, first)
}

/// For a window of `width` cells over `length` columns starting at column `first`: whether
/// the `<` marker shows, how many columns of text, and whether the `>` marker shows.
fn visible_cells(length: usize, first: usize, width: usize) -> (bool, usize, bool) {
    let left = first > 0;
    let room = width - usize::from(left);
    let right = length - first > room;
    (left, room - usize::from(right), right)
}

/// The first column to show of a text `length` columns long (its end cell included) in
/// `width` cells, with the cursor at column `cursor`: `previous` while the cursor is in
/// view there, else a window with the cursor in its middle (so that typing on scrolls the
/// row by half a width at a time, not one column per key).
pub fn window(length: usize, cursor: usize, width: usize, previous: usize) -> usize {
    assert!(width >= TEXT_CELLS_MIN && cursor < length);
    if length <= width {
        return 0;
    }
    // The first column that shows the end with only the `<` marker: further right would
    // leave cells empty.
    let last = length + 1 - width;
    let shows = |first: usize| {
        let (_, cells, _) = visible_cells(length, first, width);
        first <= cursor && cursor < first + cells
    };
    let first = previous.min(last);
    if shows(first) {
        return first;
    }
    let first = cursor.saturating_sub(width / 2).min(last);
    // Half a width back leaves the cursor in view: width / 2 < width - 2 cells of text.
    assert!(shows(first), "the cursor is in view");
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut decoder = KeyDecoder::new();
        let mut keys = Vec::new();
        decoder.feed(bytes, &mut keys);
        keys
    }

    fn typed(editor: &mut LineEditor, text: &str) {
        for c in text.chars() {
            assert_eq!(editor.on_key(Key::Char(c)), Edit::Edited);
        }
    }

    #[test]
    fn terminal_bytes_become_keys() {
        assert_eq!(
            keys(b"a\x1b[D\x1b[C\x1bOH\x1b[F\x1b[3~\x7f\r"),
            [
                Key::Char('a'),
                Key::Left,
                Key::Right,
                Key::Home,
                Key::End,
                Key::Delete,
                Key::Backspace,
                Key::Enter
            ]
        );
        assert_eq!(
            keys(b"\x1b[1;5D\x1b[1;5C\x1bb\x03\x04\x15\x0b\x17\x0c\x1b[A\x1b[B"),
            [
                Key::WordLeft,
                Key::WordRight,
                Key::WordLeft,
                Key::Interrupt,
                Key::EndOfInput,
                Key::DeleteToStart,
                Key::DeleteToEnd,
                Key::DeleteWordBefore,
                Key::Redraw,
                Key::Up,
                Key::Down
            ]
        );
        // Unknown sequences and stray controls make no key.
        assert_eq!(keys(b"\x1b[99;99Z\x1b[15~\x00\x1f"), []);
    }

    #[test]
    fn utf8_and_sequences_split_across_reads_are_put_together() {
        let mut decoder = KeyDecoder::new();
        let mut out = Vec::new();
        let text = "é漢".as_bytes();
        for byte in text.iter().chain(b"\x1b[1;5D") {
            decoder.feed(&[*byte], &mut out);
        }
        assert_eq!(out, [Key::Char('é'), Key::Char('漢'), Key::WordLeft]);
        // A cut-off character is dropped, the byte after it kept.
        assert_eq!(keys(&[0xe6, 0x97, b'x']), [Key::Char('x')]);
    }

    #[test]
    fn a_bracketed_paste_is_text_on_one_line() {
        assert_eq!(
            keys(b"\x1b[200~a\r\nb\tc\x03\x1b[D\x1b[201~\r"),
            [
                Key::Char('a'),
                Key::Char(' '),
                Key::Char(' '),
                Key::Char('b'),
                Key::Char(' '),
                Key::Char('c'),
                Key::Enter
            ]
        );
    }

    #[test]
    fn an_endless_escape_sequence_is_dropped_and_decoding_goes_on() {
        let mut bytes = b"\x1b[".to_vec();
        bytes.extend(std::iter::repeat_n(b'1', 10_000));
        bytes.extend(b"~x");
        assert_eq!(keys(&bytes), [Key::Char('x')]);
    }

    #[test]
    fn editing_moves_and_deletes_by_characters_and_words() {
        let mut editor = LineEditor::new();
        typed(&mut editor, "hello big world");
        editor.on_key(Key::WordLeft);
        assert_eq!(editor.cursor(), 10);
        editor.on_key(Key::DeleteWordBefore);
        assert_eq!(editor.line(), "hello world");
        editor.on_key(Key::Home);
        editor.on_key(Key::Delete);
        editor.on_key(Key::WordRight);
        assert_eq!(editor.cursor(), 4);
        editor.on_key(Key::DeleteToEnd);
        assert_eq!(editor.line(), "ello");
        editor.on_key(Key::Left);
        editor.on_key(Key::Backspace);
        editor.on_key(Key::DeleteToStart);
        assert_eq!(editor.line(), "o");
        assert_eq!(editor.on_key(Key::EndOfInput), Edit::Edited);
        assert_eq!(editor.line(), "");
        assert_eq!(editor.on_key(Key::EndOfInput), Edit::Quit);
        assert_eq!(editor.on_key(Key::Interrupt), Edit::Quit);
    }

    #[test]
    fn enter_submits_and_up_and_down_browse_the_history() {
        let mut editor = LineEditor::new();
        typed(&mut editor, "one");
        assert_eq!(editor.on_key(Key::Enter), Edit::Submit("one".into()));
        assert_eq!(editor.line(), "");
        typed(&mut editor, "two");
        editor.on_key(Key::Enter);
        assert_eq!(editor.on_key(Key::Enter), Edit::Submit(String::new()));
        typed(&mut editor, "dra");
        editor.on_key(Key::Up);
        assert_eq!(editor.line(), "two");
        editor.on_key(Key::Up);
        editor.on_key(Key::Up);
        assert_eq!(editor.line(), "one");
        editor.on_key(Key::Down);
        assert_eq!(editor.line(), "two");
        editor.on_key(Key::Down);
        assert_eq!(editor.line(), "dra");
        assert_eq!(editor.cursor(), 3);
    }

    #[test]
    fn the_line_and_the_history_are_bounded() {
        let mut editor = LineEditor::new();
        editor.line = vec!['x'; LINE_CHARS_MAX];
        assert_eq!(editor.on_key(Key::Char('y')), Edit::Bell);
        editor.on_key(Key::Enter);
        assert!(editor.history.is_empty(), "too long to keep");
        for n in 0..HISTORY_LINES_MAX + 10 {
            typed(&mut editor, &n.to_string());
            editor.on_key(Key::Enter);
        }
        assert_eq!(editor.history.len(), HISTORY_LINES_MAX);
        assert_eq!(editor.history[0], "10".chars().collect::<Vec<_>>());
    }

    #[test]
    fn a_short_line_shows_whole_after_the_prompt() {
        let mut editor = LineEditor::new();
        typed(&mut editor, "hi there");
        let row = editor.render("[general]> ", 80);
        assert_eq!(row.text, "[general]> hi there");
        assert_eq!(row.cursor, 19);
        editor.on_key(Key::Home);
        assert_eq!(editor.render("[general]> ", 80).cursor, 11);
    }

    /// Issue 15: a 5000-character paste redrew the line 12 times in growing copies.
    #[test]
    fn a_line_longer_than_the_row_scrolls_sideways_on_one_row() {
        let mut editor = LineEditor::new();
        let text: String = (0..5000)
            .map(|n| char::from(b'a' + (n % 26) as u8))
            .collect();
        typed(&mut editor, &text);
        let row = editor.render("> ", 40);
        // 38 cells and the cursor after them: the last column stays empty.
        assert_eq!(text_width(&row.text), 38, "{row:?}");
        assert!(row.text.starts_with("> <"), "{row:?}");
        assert!(text.ends_with(&row.text[3..]), "the end shows: {row:?}");
        assert_eq!(row.cursor, 38);
        // Home: the start shows, the `>` marks the rest.
        editor.on_key(Key::Home);
        let row = editor.render("> ", 40);
        assert_eq!(row.text, format!("> {}>", &text[..36]));
        assert_eq!(row.cursor, 2);
        // Moving within the view keeps it; leaving it moves by half a width.
        for _ in 0..35 {
            editor.on_key(Key::Right);
        }
        assert_eq!(editor.render("> ", 40).text, format!("> {}>", &text[..36]));
        editor.on_key(Key::Right);
        let row = editor.render("> ", 40);
        assert!(row.text.starts_with("> <"), "{row:?}");
        assert_eq!(text_width(&row.text), 39);
        assert_eq!(row.text.chars().nth(row.cursor), text.chars().nth(36));
    }

    #[test]
    fn wide_characters_count_two_cells_and_a_cut_one_is_blank() {
        let line: Vec<char> = "漢字漢字漢字漢字漢字漢字".chars().collect();
        let (row, _) = render_row("", &line, 0, 12, 0);
        assert_eq!(row.text, "漢字漢字漢>");
        assert_eq!(text_width(&row.text), 11);
        let (row, _) = render_row("", &line, line.len(), 12, 0);
        assert_eq!(row.text, "< 漢字漢字");
        assert_eq!(row.cursor, 10);
    }

    #[test]
    fn a_narrow_terminal_drops_the_prompt_before_the_text() {
        let line: Vec<char> = "abcdefghijklmnopqrstuvwxyz".chars().collect();
        let (row, _) = render_row("[a-long-room-name]> ", &line, 0, 20, 0);
        assert_eq!(row.text, "abcdefghijklmnopqr>");
    }

    proptest! {
        /// Whatever the line, cursor, width and earlier scroll: one row, never wider than
        /// the terminal less its last column, with the cursor in view on the character it
        /// stands on.
        #[test]
        fn the_row_fits_and_shows_the_cursor(
            text in "[a-z 漢é\u{301}]{0,300}",
            cursor_pick in any::<usize>(),
            columns in 10usize..120,
            scroll in 0usize..400,
        ) {
            let line: Vec<char> = text.chars().collect();
            let cursor = cursor_pick % (line.len() + 1);
            let (row, first) = render_row("> ", &line, cursor, columns, scroll);
            prop_assert!(text_width(&row.text) < columns, "{:?}", row);
            prop_assert!(row.cursor < columns);
            prop_assert!(!row.text.contains('\n'));
            let starts: usize = line[..cursor].iter().map(|&c| char_width(c)).sum();
            prop_assert!(first <= starts);
            // Stable: drawing again from where it is changes nothing.
            let (again, _) = render_row("> ", &line, cursor, columns, first);
            prop_assert_eq!(again, row);
        }

        #[test]
        fn the_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            KeyDecoder::new().feed(&bytes, &mut out);
            for key in out {
                if let Key::Char(c) = key {
                    prop_assert!(!c.is_control());
                }
            }
        }
    }
}
