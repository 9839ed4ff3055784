//! The terminal of the interactive client: raw mode while the line editor runs, the
//! terminal's width, standard input read on a thread of its own, and the writing of the
//! edited row and of the lines that appear above it.
//!
//! The only code of the client that touches the terminal, and only for the binary's
//! interactive mode. What to show is decided by the pure `editor` and `display`; this file
//! puts it on the screen and must not decide anything about chat.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::thread;

use crossbeam_channel::Sender;
use rustix::termios::{self, InputModes, LocalModes, OptionalActions, SpecialCodeIndex, Termios};

use crate::client::display::printable;
use crate::client::editor::Row;

/// Width assumed when the terminal reports none (a pseudo-terminal made without a size).
pub const COLUMNS_DEFAULT: usize = 80;

/// Bytes read from a terminal at a time: a paste arrives in a few reads, a key in one.
pub const KEYS_READ_BYTES: usize = 4096;

/// Longest line read from piped input; a longer one is cut into lines this long. Four
/// bytes for each character the line editor takes, so a piped line is cut no sooner.
pub const PIPED_LINE_BYTES_MAX: u64 = 4 * crate::client::editor::LINE_CHARS_MAX as u64;

/// Bound of the stdin → front end channel. A person types far slower than the front end
/// draws; a full channel means the front end is busy, and the reader then waits while the
/// terminal (or pipe) holds the rest.
pub const INPUT_QUEUE_MAX: usize = 64;

/// Turns bracketed paste on (a paste then arrives between `ESC [ 200 ~` and
/// `ESC [ 201 ~`, so its line breaks do not send it) and off.
const PASTE_ON: &str = "\x1b[?2004h";
const PASTE_OFF: &str = "\x1b[?2004l";
/// Erases from the cursor to the end of its row.
const ERASE_TO_END: &str = "\x1b[K";
/// Cursor home, then erase the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// What standard input brought.
#[derive(Debug)]
pub enum Typed {
    /// Bytes from a terminal in raw mode, for the key decoder.
    Keys(Vec<u8>),
    /// A line of piped input, its line break removed.
    Line(String),
}

/// Whether the client talks to a person at a terminal (both ends), rather than to pipes.
pub fn is_interactive() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

/// Reads standard input on a thread of its own until its end, which the front end sees as
/// `input` disconnecting: raw bytes from a terminal (`keys`), else whole lines.
pub fn spawn_reader(keys: bool, input: Sender<Typed>) -> io::Result<()> {
    thread::Builder::new()
        .name("pbchat-stdin".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut stdin = stdin.lock();
            loop {
                let typed = if keys {
                    let mut chunk = vec![0; KEYS_READ_BYTES];
                    match stdin.read(&mut chunk) {
                        Ok(0) => return,
                        Ok(count) => {
                            chunk.truncate(count);
                            Typed::Keys(chunk)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                } else {
                    let mut line = Vec::new();
                    match (&mut stdin)
                        .take(PIPED_LINE_BYTES_MAX)
                        .read_until(b'\n', &mut line)
                    {
                        Ok(0) => return,
                        Ok(_) => {
                            while matches!(line.last(), Some(b'\n' | b'\r')) {
                                line.pop();
                            }
                            Typed::Line(String::from_utf8_lossy(&line).into_owned())
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                };
                if input.send(typed).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// The terminal in raw mode, with the edited row at its bottom. Dropping it erases the row
/// and gives the terminal back as it was.
pub struct Terminal {
    /// The settings to restore.
    saved: Termios,
    out: io::Stdout,
    columns: usize,
    /// The row shown last, drawn again below each line printed above it.
    row: Row,
}

impl Terminal {
    /// Raw mode: keys arrive one by one, unechoed, Ctrl-C and Ctrl-Z as bytes. Output
    /// processing stays on, so `\n` still starts a new line at its left edge.
    pub fn open() -> io::Result<Terminal> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.local_modes
            .remove(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG | LocalModes::IEXTEN);
        raw.input_modes.remove(InputModes::IXON | InputModes::ICRNL);
        raw.special_codes[SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[SpecialCodeIndex::VTIME] = 0;
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        let mut terminal = Terminal {
            saved,
            out: io::stdout(),
            columns: COLUMNS_DEFAULT,
            row: Row {
                text: String::new(),
                cursor: 0,
            },
        };
        terminal.measure();
        terminal.out.write_all(PASTE_ON.as_bytes())?;
        Ok(terminal)
    }

    /// Columns of the terminal, as of the last [`Terminal::measure`].
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Asks the terminal its width again (after `SIGWINCH`).
    pub fn measure(&mut self) {
        self.columns = match termios::tcgetwinsize(io::stdout()) {
            Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
            _ => COLUMNS_DEFAULT,
        };
    }

    /// Draws `row` over the current one and puts the cursor where it says.
    pub fn show(&mut self, row: &Row) -> io::Result<()> {
        self.row = row.clone();
        let mut bytes = Vec::with_capacity(row.text.len() + 16);
        draw(&mut bytes, row);
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    /// Prints `lines` above the edited row, which moves down below them.
    pub fn print_above(&mut self, lines: &[String]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"\r");
        bytes.extend_from_slice(ERASE_TO_END.as_bytes());
        for line in lines {
            bytes.extend_from_slice(printable(line).as_bytes());
            bytes.extend_from_slice(b"\n");
        }
        draw(&mut bytes, &self.row);
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    /// Leaves `row` on the screen as a line of its own (the echo of a line sent) and
    /// starts an empty row below it.
    pub fn keep(&mut self, row: &Row) -> io::Result<()> {
        self.print_above(std::slice::from_ref(&row.text))
    }

    pub fn clear_screen(&mut self) -> io::Result<()> {
        self.out.write_all(CLEAR_SCREEN.as_bytes())?;
        let row = self.row.clone();
        self.show(&row)
    }

    pub fn bell(&mut self) -> io::Result<()> {
        self.out.write_all(b"\x07")?;
        self.out.flush()
    }
}

/// `\r`, the row, erase the rest of it, then the cursor to its column.
fn draw(bytes: &mut Vec<u8>, row: &Row) {
    bytes.extend_from_slice(b"\r");
    bytes.extend_from_slice(row.text.as_bytes());
    bytes.extend_from_slice(ERASE_TO_END.as_bytes());
    bytes.extend_from_slice(b"\r");
    if row.cursor > 0 {
        bytes.extend_from_slice(format!("\x1b[{}C", row.cursor).as_bytes());
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // Leaving anyway: nothing to do about a terminal that is gone.
        let _ = write!(self.out, "\r{ERASE_TO_END}{PASTE_OFF}");
        let _ = self.out.flush();
        let _ = termios::tcsetattr(io::stdin(), OptionalActions::Now, &self.saved);
    }
}
