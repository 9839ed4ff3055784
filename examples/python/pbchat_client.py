#!/usr/bin/env python3
"""pbchat reference client in Python: the example for authors of clients in other languages.

It is written from the protocol texts alone, not from the server's code:

* the client contract, protocol version 1 (JSON lines over TCP, docs/protocol.md in the
  repository and the contract it records: framing, hello/welcome/redirect, join/joined/msg,
  send/ack, ping/pong, goodbye, error codes, the guarantees);
* the resume recipe of docs/protocol.md: stable session, rejoin with `after`/`after_epoch`
  of the last message shown, resend unacknowledged sends with their original ids, skip a
  `msg` at or before the last shown in its room unless its epoch is newer (the surviving
  history after two primaries, replayed from where the histories part), a `msg` whose
  `orig` names a message already shown, and the surviving history's copy (same sender and
  id) of a message shown from the part it replaced;
* the liveness rule (issue 14): `welcome` carries `peer` and `probe_ms`; a client that wrote
  a frame and then heard nothing at all for `probe_ms` asks the other node, on a second
  connection, with a `hello`; only a node that serves answers `welcome`, and then the client
  moves there. A slow node is not left: a `redirect` keeps the current connection. A
  `hello` left unanswered for 400 ms goes to another server too; the first `welcome` wins.

Design: one thread, non-blocking sockets and `selectors`. The library class `Client` holds
at most two connections (the session's and a probe) and is driven by `Client.poll()`, which
returns the events that happened (dicts with an "event" key). Nothing blocks on a node
except name resolution (give IP addresses to avoid it).

Limits (on purpose, to stay short):

* standard library only, Python 3.9 or later (Debian 12's python3 is 3.11);
* `history` is not wrapped: its replies would mix with the live order the skip rules keep;
* the messages shown per room are remembered within a bound (SHOWN_PER_ROOM_MAX); an `orig`
  copy of a message shown longer ago than that is shown again;
* message ids carry a random per-process prefix, so ids are unique per nick, which the
  copy rule above relies on;
* at most UNACKED_MAX sends are in flight; `send` raises WindowFull beyond it;
* TLS (`--tls`, `--ca FILE`) checks the certificate against the host part of the address.

Command line, for people and for the tests (events are JSON lines on stdout, diagnostics on
stderr):

    pbchat_client.py --server 127.0.0.1:7400 --server 127.0.0.1:7410 --nick bot \
        --room general --send "hello"                  # exit 0 once acknowledged
    pbchat_client.py ... --room general --load 200 --rate 40   # "load 0" .. "load 199"
    pbchat_client.py ... --room general --listen --after 0     # print every message
"""

import argparse
import collections
import errno
import json
import logging
import os
import random
import secrets
import selectors
import socket
import ssl
import sys
import time

PROTOCOL_VERSION = 1

# Send a ping after this long without writing: the contract requires a frame at least every
# 15 s, and a frame that is answered is what lets the liveness rule notice a stopped node,
# so an idle client notices within PING_IDLE_S + probe_ms.
PING_IDLE_S = 3.0

# Last resort: a connection on which nothing at all arrived for this long is dead. Pings
# every PING_IDLE_S are answered, so a live node is never this quiet.
SILENCE_DEAD_S = 7.0

# A backup holds a hello for up to 2 s while it decides whether to take over, so a
# reconnecting hello waits a little longer than that for its answer.
HELLO_ANSWER_TIMEOUT_S = 3.0

# A TCP (and TLS) connect that takes longer than this is to a node that is not there.
CONNECT_TIMEOUT_S = 3.0

# The liveness rule's bound on a whole probe (connect, hello, answer): past it the current
# node is taken to be slow, not stopped.
PROBE_ANSWER_TIMEOUT_S = 3.0

# A v1 node without the liveness extension sends no probe_ms: the pair's default
# (2 x the 200 ms heartbeat interval). Also how long a new connection's hello waits for
# its answer before the same hello goes to another server too: a stopped primary's kernel
# still accepts the connection, and nothing answers.
DEFAULT_PROBE_MS = 400

# Reconnect backoff: the first retry after losing a welcomed connection is immediate (the
# other node is usually ready or holds the hello); each failed attempt doubles the wait,
# up to a cap that keeps a client from hammering a pair that is down.
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

# Sends waiting for their ack. 256 covers over 6 s of a 40 msg/s sender riding through a
# fail-over, and resending all of them at once stays far below a node's default send burst
# (2000).
UNACKED_MAX = 256

# A send refused for now (rate_limited, unavailable, not_primary) is retried after this.
RETRY_PAUSE_S = 0.2

# Messages remembered per room for the copy rules. A re-committed message comes back right
# after the two histories meet, so the recent past is enough.
SHOWN_PER_ROOM_MAX = 10_000

# Bytes read per readiness event, and the longest line accepted from a node: a msg carries
# at most a configured body (4 KiB by default, 1 MiB at most) and `joined` a member list.
READ_CHUNK_BYTES = 65_536
LINE_MAX_BYTES = 4 * 1024 * 1024

# Bytes queued to one connection before it counts as dead: UNACKED_MAX sends of the
# largest body plus pings and joins fit well below it.
OUTBOX_MAX_BYTES = 8 * 1024 * 1024

# Errors after which retrying cannot help: the client stops.
FATAL_CODES = ("nick_in_use", "unauthorized", "unsupported_version")

# Errors answering a send that mean "not stored now, try again later".
RETRY_CODES = ("rate_limited", "unavailable", "not_primary")

log = logging.getLogger("pbchat")


class FatalError(Exception):
    """The node refused the session for good (nick_in_use, unauthorized, ...)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


class WindowFull(Exception):
    """UNACKED_MAX sends are waiting for their ack; poll() until some are acknowledged."""


def _split_address(server):
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server {server!r}: expected host:port")
    return host.strip("[]"), int(port)


class _Room:
    """What the client remembers of one joined room, to resume without loss or doubles."""

    def __init__(self, after, after_epoch):
        # Resume point: (seq, epoch) of the last message shown here (or the `head` of the
        # first `joined` for a live-only join). None: nothing yet, join live.
        self.after = after
        self.after_epoch = after_epoch
        # (epoch, seq) -> (from, id) of messages shown, for the copy rules; the deque
        # evicts the oldest.
        self.shown = {}
        self.shown_order = collections.deque()
        # (from, id) of messages shown from a part of history the node replaced (after two
        # primaries served at once): their copies in the surviving history are skipped.
        self.replaced = set()

    def remember(self, epoch, seq, key):
        if len(self.shown_order) >= SHOWN_PER_ROOM_MAX:
            self.shown.pop(self.shown_order.popleft(), None)
        self.shown[(epoch, seq)] = key
        self.shown_order.append((epoch, seq))

    def replaced_by(self, epoch, seq):
        """What was shown at `seq` or later in an epoch older than `epoch`."""
        return {key for (e, s), key in self.shown.items() if e < epoch and s >= seq}


class _Pending:
    """A send not yet acknowledged: resent with the same id after a reconnect."""

    def __init__(self, room, body):
        self.room = room
        self.body = body
        # When a refused send (RETRY_CODES) goes out again; None: not waiting.
        self.retry_at = None


# Connection states, in order.
CONNECTING, TLS_HANDSHAKE, HELLO_SENT, OPEN = "connecting", "tls", "hello_sent", "open"


class _Connection:
    """One non-blocking connection to one node: connect, TLS, line framing, write buffer."""

    def __init__(self, server, is_probe, tls_context, now):
        self.server = server
        # A probe is the liveness rule's second connection; it becomes the session's
        # connection only if welcomed (or if the session's connection dies meanwhile).
        self.is_probe = is_probe
        # For the "connected" event: how this connection came to be.
        self.via = "probe" if is_probe else None
        self.tls_context = tls_context
        self.state = CONNECTING
        # Until welcomed: when this connection is given up. A probe's bound covers it all;
        # a session's connect and hello each get their own (see Client._say_hello).
        self.deadline = now + (PROBE_ANSWER_TIMEOUT_S if is_probe else CONNECT_TIMEOUT_S)
        self.last_read_at = now
        self.last_write_at = now
        # Time of the first frame written since anything arrived; None when every write so
        # far has been followed by some byte from the node. The liveness rule's clock.
        self.unanswered_since = None
        # When hello went out, and whether another server was asked while it waits.
        self.hello_at = None
        self.hello_probed = False
        self.tls_wants = selectors.EVENT_WRITE
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.welcome = None
        host, port = _split_address(server)
        self.host = host
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        self.sock = socket.socket(family, kind, proto)
        self.sock.setblocking(False)
        # Frames are small and latency matters more than packet count.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = self.sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.sock.close()
            raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")

    def interest(self):
        if self.state == CONNECTING:
            return selectors.EVENT_WRITE
        if self.state == TLS_HANDSHAKE:
            return self.tls_wants
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)

    def on_connected(self):
        """The TCP connect finished; returns True when ready for hello."""
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect: {errno.errorcode.get(code, code)}")
        if self.tls_context is None:
            return True
        self.sock = self.tls_context.wrap_socket(
            self.sock, server_hostname=self.host, do_handshake_on_connect=False
        )
        self.state = TLS_HANDSHAKE
        return self.handshake()

    def handshake(self):
        """One step of the TLS handshake; True when done."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.tls_wants = selectors.EVENT_READ
            return False
        except ssl.SSLWantWriteError:
            self.tls_wants = selectors.EVENT_WRITE
            return False
        return True

    def queue(self, frame, now):
        self.outbox += json.dumps(frame, separators=(",", ":")).encode() + b"\n"
        if len(self.outbox) > OUTBOX_MAX_BYTES:
            raise OSError(errno.ENOBUFS, f"{len(self.outbox)} bytes queued, none taken")
        self.last_write_at = now
        if self.unanswered_since is None:
            self.unanswered_since = now
        self.flush()

    def flush(self):
        if self.state in (CONNECTING, TLS_HANDSHAKE):
            return
        while self.outbox:
            try:
                # TLS writes take at most one record; a plain socket takes what fits.
                taken = self.sock.send(self.outbox[:16384])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            del self.outbox[:taken]

    def read_frames(self, now):
        """Reads what is there; returns decoded frames. Raises EOFError when closed."""
        frames = []
        while True:
            try:
                data = self.sock.recv(READ_CHUNK_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                raise EOFError("closed by the node")
            self.last_read_at = now
            # Any byte answers every write so far (liveness rule, point 2).
            self.unanswered_since = None
            self.inbox += data
            frames.extend(self._take_lines())
            # Decrypted bytes TLS already holds do not wake the selector: drain them (at
            # most one record). A plain socket is read again on the next readiness event.
            if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                break
        return frames

    def _take_lines(self):
        frames = []
        while True:
            end = self.inbox.find(b"\n")
            if end < 0:
                if len(self.inbox) > LINE_MAX_BYTES:
                    raise ValueError(f"a line longer than {LINE_MAX_BYTES} bytes")
                return frames
            line = bytes(self.inbox[:end]).rstrip(b"\r")
            del self.inbox[: end + 1]
            if not line.strip():
                continue  # blank lines are ignored
            frame = json.loads(line)  # ValueError: a broken node; the caller drops us
            if isinstance(frame, dict) and isinstance(frame.get("type"), str):
                frames.append(frame)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Client:
    """A pbchat session that survives fail-overs.

    Client(servers, nick, session=None, token=None, tls_context=None)

    `servers`: "host:port" of each node, tried in turn. `session`: keep it stable across
    restarts of your program if its unacknowledged sends must survive them too (ids carry
    a random per-process prefix, so a restart never reuses one). Drive it with `poll()`
    (or iterate `events()`); `join`, `send` and `close` may be called between polls.

    Events are dicts: {"event": "connected"|"disconnected"|"joined"|"msg"|"ack"|
    "presence"|"left"|"error"|"probe"|"probe_failed", "t": monotonic seconds, ...}.
    """

    def __init__(self, servers, nick, session=None, token=None, tls_context=None):
        if not servers:
            raise ValueError("at least one server")
        for server in servers:
            _split_address(server)
        self.servers = list(servers)
        self.nick = nick
        self.session = session or secrets.token_hex(8)
        self.token = token
        self.tls_context = tls_context
        self._rooms = {}
        self._unacked = collections.OrderedDict()  # id -> _Pending, in send order
        self._id_prefix = secrets.token_hex(4)
        self._next_id = 0
        self._conn = None
        self._probe = None
        self._selector = selectors.DefaultSelector()
        self._registered = {}  # connection -> interest registered with the selector
        self._events = []
        self._closed = False
        self._ever_welcomed = False
        # Reconnecting: when the next attempt starts, how many failed in a row, where to go.
        self._reconnect_at = time.monotonic()
        self._attempts = 0
        self._hint = None  # the `primary` of the last goodbye/redirect: tried first
        self._candidates = collections.deque()
        self._last_server = None
        # Learned from the last welcome.
        self._peer = None
        self._probe_ms = DEFAULT_PROBE_MS
        self._probe_turn = 0
        self._ping_counter = 0
        # Frames of a welcomed connection. pong needs nothing: any byte is proof of life.
        self._handlers = {
            "ack": self._on_ack,
            "msg": self._on_msg,
            "joined": self._on_joined,
            "left": self._on_left,
            "presence": self._on_presence,
            "goodbye": self._on_goodbye,
            "error": self._on_error,
        }

    # ---- the API -------------------------------------------------------------------

    @property
    def connected(self):
        return self._conn is not None and self._conn.state == OPEN

    @property
    def can_send(self):
        return len(self._unacked) < UNACKED_MAX

    @property
    def unacked(self):
        return len(self._unacked)

    def join(self, room, after=None, after_epoch=None):
        """Joins `room` (again after every reconnect). `after`: replay from that seq."""
        if room not in self._rooms:
            self._rooms[room] = _Room(after, after_epoch)
        if self.connected:
            self._write(self._conn, self._join_frame(room))

    def leave(self, room):
        if self._rooms.pop(room, None) is not None and self.connected:
            self._write(self._conn, {"type": "leave", "room": room})

    def send(self, room, body):
        """Queues a message; returns its id. Its "ack" event says it is committed."""
        if room not in self._rooms:
            raise ValueError(f"room {room!r}: join it first")
        if not self.can_send:
            raise WindowFull(f"{UNACKED_MAX} sends wait for their ack")
        message_id = f"{self._id_prefix}-{self._next_id}"
        self._next_id += 1
        self._unacked[message_id] = _Pending(room, body)
        if self.connected:
            self._write(self._conn, self._send_frame(message_id))
        return message_id

    def poll(self, timeout=None):
        """Runs the client for up to `timeout` seconds (None: until something happens);
        returns the events, possibly none. Raises FatalError."""
        if self._closed:
            raise RuntimeError("client closed")
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self._on_timers(now)
            wait = max(0.0, self._next_timer(now) - now)
            if end is not None:
                wait = min(wait, max(0.0, end - now))
            if self._events:
                wait = 0.0
            self._sync_selector()
            for key, mask in self._selector.select(wait):
                self._on_ready(key.data, mask)
            if self._events or (end is not None and time.monotonic() >= end):
                events, self._events = self._events, []
                return events

    def events(self):
        """Every event, forever (until FatalError or close)."""
        while not self._closed:
            yield from self.poll()

    def close(self):
        """Says quit to the node (best effort) and closes everything."""
        if self._closed:
            return
        if self.connected:
            try:
                self._conn.queue({"type": "quit"}, time.monotonic())
            except OSError:
                pass
        for conn in (self._conn, self._probe):
            if conn is not None:
                self._forget(conn)
        self._conn = self._probe = None
        self._selector.close()
        self._closed = True

    # ---- timers --------------------------------------------------------------------

    def _on_timers(self, now):
        if self._conn is None and now >= self._reconnect_at:
            self._start_session_connection(now)
        for conn in (self._conn, self._probe):
            if conn is not None and conn.state != OPEN and now >= conn.deadline:
                self._lose(conn, f"no answer in time ({conn.state})", now)
        conn = self._conn
        if self._hello_probe_at(conn) <= now:
            # No answer to hello yet: ask another server too; the first welcome wins.
            conn.hello_probed = True
            self._start_probe(now)
        if conn is None or conn.state != OPEN:
            return
        if now - conn.last_read_at >= SILENCE_DEAD_S:
            self._lose(conn, f"nothing heard for {SILENCE_DEAD_S} s", now)
            return
        if self._probe is None and self._suspect_at(conn) <= now:
            self._start_probe(now)
        if now - conn.last_write_at >= PING_IDLE_S:
            self._ping_counter += 1
            self._write(conn, {"type": "ping", "token": str(self._ping_counter)})
        for message_id, pending in self._unacked.items():
            if pending.retry_at is not None and pending.retry_at <= now:
                pending.retry_at = None
                self._write(conn, self._send_frame(message_id))

    def _hello_probe_at(self, conn):
        if conn is None or conn.state != HELLO_SENT or conn.hello_probed or self._probe:
            return float("inf")
        return conn.hello_at + DEFAULT_PROBE_MS / 1000.0

    def _suspect_at(self, conn):
        if conn.unanswered_since is None:
            return float("inf")
        return conn.unanswered_since + self._probe_ms / 1000.0

    def _next_timer(self, now):
        times = [now + 1.0]  # a bound, so that nothing depends on a missed wake-up
        if self._conn is None:
            times.append(self._reconnect_at)
        for conn in (self._conn, self._probe):
            if conn is not None and conn.state != OPEN:
                times.append(conn.deadline)
        conn = self._conn
        times.append(self._hello_probe_at(conn))
        if conn is not None and conn.state == OPEN:
            times.append(conn.last_read_at + SILENCE_DEAD_S)
            times.append(conn.last_write_at + PING_IDLE_S)
            if self._probe is None:
                times.append(self._suspect_at(conn))
            times.extend(p.retry_at for p in self._unacked.values() if p.retry_at)
        return min(times)

    # ---- connections ---------------------------------------------------------------

    def _next_server(self):
        """The announced primary first, then the lost node's peer, then the list in turn."""
        if self._hint:
            server, self._hint = self._hint, None
            return server
        if not self._candidates:
            start = 0
            if self._last_server in self.servers:
                start = self.servers.index(self._last_server) + 1
            order = self.servers[start:] + self.servers[:start]
            if self._peer and self._peer not in order:
                order.insert(0, self._peer)
            elif self._peer:
                order.remove(self._peer)
                order.insert(0, self._peer)
            self._candidates.extend(order)
        return self._candidates.popleft()

    def _start_session_connection(self, now):
        server = self._next_server()
        self._last_server = server
        conn = self._open(server, False, now)
        if conn is None:
            self._schedule_reconnect(now)
        else:
            self._conn = conn

    def _start_probe(self, now):
        """Liveness rule, point 3: ask the other node, without leaving this one."""
        if self._peer and self._peer != self._conn.server:
            server = self._peer
        else:
            others = [s for s in self.servers if s != self._conn.server]
            if not others:
                self._conn.unanswered_since = now  # nobody to ask; wait another probe_ms
                return
            server = others[self._probe_turn % len(others)]
            self._probe_turn += 1
        waited = now - (self._conn.unanswered_since or now)
        log.info(
            "%s: nothing heard for %.0f ms after a write; asking %s",
            self._conn.server,
            waited * 1000,
            server,
        )
        self._event("probe", server=server, silent_ms=round(waited * 1000))
        self._probe = self._open(server, True, now)
        if self._probe is None:
            self._event("probe_failed", server=server, reason="connect failed")
            self._conn.unanswered_since = now

    def _open(self, server, is_probe, now):
        try:
            return _Connection(server, is_probe, self.tls_context, now)
        except OSError as error:
            log.info("%s: %s", server, error)
            return None

    def _schedule_reconnect(self, now):
        """Exponential backoff with jitter, so that clients do not return in lockstep."""
        if self._attempts == 0:
            delay = 0.0
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._attempts - 1))
            delay *= random.uniform(0.5, 1.0)
        self._attempts += 1
        self._reconnect_at = now + delay

    def _sync_selector(self):
        live = [c for c in (self._conn, self._probe) if c is not None]
        for conn in [c for c in self._registered if c not in live]:
            self._forget(conn)  # not expected: every drop goes through _forget
        for conn in live:
            interest = conn.interest()
            if conn not in self._registered:
                self._selector.register(conn.sock, interest, conn)
            elif self._registered[conn] != interest:
                self._selector.modify(conn.sock, interest, conn)
            self._registered[conn] = interest

    def _forget(self, conn):
        if conn in self._registered:
            self._selector.unregister(conn.sock)
            del self._registered[conn]
        conn.close()

    def _lose(self, conn, reason, now):
        """`conn` is over. A probe's loss changes nothing; the session's reconnects."""
        self._forget(conn)
        if conn is self._probe:
            self._probe = None
            log.info("probe of %s: %s; staying on %s", conn.server, reason, self._conn.server)
            self._event("probe_failed", server=conn.server, reason=reason)
            # Probe again only after another probe_ms in which nothing arrived.
            if self._conn.unanswered_since is not None:
                self._conn.unanswered_since = max(self._conn.unanswered_since, now)
            return
        if conn is not self._conn:
            return
        self._conn = None
        was_open = conn.state == OPEN
        log.info("%s: %s", conn.server, reason)
        if was_open:
            self._event("disconnected", server=conn.server, reason=reason)
            self._attempts = 0
        if self._probe is not None:
            # The probe already said hello elsewhere: let it be the reconnection.
            self._conn, self._probe = self._probe, None
            self._conn.is_probe = False
            return
        self._schedule_reconnect(now)

    def _on_ready(self, conn, mask):
        if conn is not self._conn and conn is not self._probe:
            return  # dropped earlier in this round
        now = time.monotonic()
        try:
            if conn.state == CONNECTING:
                if conn.on_connected():
                    self._say_hello(conn, now)
                return
            if conn.state == TLS_HANDSHAKE:
                if conn.handshake():
                    self._say_hello(conn, now)
                return
            if mask & selectors.EVENT_WRITE:
                conn.flush()
            if mask & selectors.EVENT_READ:
                for frame in conn.read_frames(now):
                    self._on_frame(conn, frame, now)
                    if conn is not self._conn and conn is not self._probe:
                        return  # the frame ended this connection
        except (OSError, EOFError, ValueError) as error:
            self._lose(conn, str(error) or type(error).__name__, now)

    def _say_hello(self, conn, now):
        conn.state = HELLO_SENT
        conn.hello_at = now
        if not conn.is_probe:
            conn.deadline = now + HELLO_ANSWER_TIMEOUT_S
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "nick": self.nick,
            "session": self.session,
        }
        if self.token is not None:
            hello["token"] = self.token
        conn.queue(hello, now)

    # ---- frames --------------------------------------------------------------------

    def _on_frame(self, conn, frame, now):
        kind = frame["type"]
        if conn.state == HELLO_SENT:
            if kind == "welcome":
                self._on_welcome(conn, frame, now)
            elif kind == "redirect":
                if not conn.is_probe:
                    self._hint = frame.get("primary")  # null: try the other servers
                self._lose(conn, f"redirect to {frame.get('primary')}", now)
            elif kind == "error":
                code = frame.get("code")
                if code in FATAL_CODES and not conn.is_probe:
                    self.close()
                    raise FatalError(code, frame.get("message", ""))
                self._lose(conn, f"error {code}: {frame.get('message')}", now)
            return
        handler = self._handlers.get(kind)
        if handler is not None:  # other frame types are ignored (compatible extensions)
            handler(conn, frame, now)

    def _on_welcome(self, conn, frame, now):
        if conn.is_probe:
            # Liveness rule: the other node serves now. Leave the old one for good.
            old, self._conn, self._probe = self._conn, conn, None
            self._forget(old)
            conn.is_probe = False
        via = conn.via or ("reconnect" if self._ever_welcomed else "first")
        conn.state = OPEN
        conn.welcome = frame
        self._ever_welcomed = True
        self._attempts = 0
        self._hint = None
        self._candidates.clear()
        self._last_server = conn.server
        self._peer = frame.get("peer")
        probe_ms = frame.get("probe_ms")
        if not (isinstance(probe_ms, int) and probe_ms > 0):
            probe_ms = DEFAULT_PROBE_MS  # a node without the liveness extension
        self._probe_ms = probe_ms
        self._event(
            "connected",
            server=conn.server,
            node=frame.get("node"),
            epoch=frame.get("epoch"),
            via=via,
        )
        # The resume recipe: rejoin every room from the last message shown, then resend
        # every unacknowledged send with its original id (the node de-duplicates).
        for room in self._rooms:
            self._write(conn, self._join_frame(room))
        for message_id, pending in self._unacked.items():
            pending.retry_at = None
            self._write(conn, self._send_frame(message_id))

    def _on_ack(self, conn, frame, now):
        pending = self._unacked.pop(frame.get("id"), None)
        if pending is None:
            return  # an ack of a resend already acknowledged: report each id once
        self._event("ack", id=frame["id"], room=pending.room, seq=frame.get("seq"))

    def _on_msg(self, conn, frame, now):
        room = self._rooms.get(frame.get("room"))
        seq, epoch = frame.get("seq"), frame.get("epoch")
        if room is None or not isinstance(seq, int):
            return
        if room.after is not None and seq <= room.after:
            # Within one history epochs never fall as seq rises: at or before our position
            # with an epoch no newer, it is a replay of what we showed.
            if room.after_epoch is None or not isinstance(epoch, int) or epoch <= room.after_epoch:
                return
            # A newer epoch at a seq we passed: the surviving history after two primaries,
            # replayed from where the histories part. New to us, except copies of what we
            # showed from the part it replaced.
            room.replaced = room.replaced_by(epoch, seq)
        key = (frame.get("from"), frame.get("id"))
        orig = frame.get("orig")
        seen = isinstance(orig, dict) and (orig.get("epoch"), orig.get("seq")) in room.shown
        if not seen and key in room.replaced:
            # The same message stored by both primaries (the old one alone, the new one from
            # the sender's resend): the merge kept one, without `orig`.
            room.replaced.discard(key)
            seen = True
        room.after, room.after_epoch = seq, epoch
        room.remember(epoch, seq, key)
        if seen:
            return  # a copy of a message shown before
        self._event(
            "msg",
            room=frame["room"],
            seq=seq,
            epoch=epoch,
            id=frame.get("id"),
            **{"from": frame.get("from")},
            body=frame.get("body"),
            ts=frame.get("ts"),
        )

    def _on_joined(self, conn, frame, now):
        room = self._rooms.get(frame.get("room"))
        if room is None:
            return
        if room.after is None and isinstance(frame.get("head"), int):
            # Joined live: resume from here, so that a reconnect loses nothing after it.
            room.after = frame["head"]
        self._event("joined", room=frame["room"], members=frame.get("members"))

    def _on_left(self, conn, frame, now):
        self._event("left", room=frame.get("room"))

    def _on_presence(self, conn, frame, now):
        self._event(
            "presence",
            room=frame.get("room"),
            nick=frame.get("nick"),
            change=frame.get("event"),
        )

    def _on_goodbye(self, conn, frame, now):
        # The node closes on purpose and names where to go.
        self._hint = frame.get("primary")
        self._lose(conn, f"goodbye ({frame.get('reason')})", now)

    def _on_error(self, conn, frame, now):
        code, message, message_id = frame.get("code"), frame.get("message"), frame.get("id")
        if code in FATAL_CODES:
            self.close()
            raise FatalError(code, message or "")
        pending = self._unacked.get(message_id) if message_id is not None else None
        if pending is not None and code in RETRY_CODES:
            pending.retry_at = now + RETRY_PAUSE_S  # not stored; same id again shortly
            log.info("send %s: %s; retrying", message_id, code)
            return
        if pending is not None:
            del self._unacked[message_id]  # refused for good (too_large, not_joined, ...)
        self._event("error", code=code, message=message, id=message_id)
        # slow_consumer: the node closes; the reconnect resumes without loss.

    # ---- helpers -------------------------------------------------------------------

    def _write(self, conn, frame):
        try:
            conn.queue(frame, time.monotonic())
        except OSError as error:
            self._lose(conn, str(error), time.monotonic())

    def _join_frame(self, room):
        frame = {"type": "join", "room": room}
        state = self._rooms[room]
        if state.after is not None:
            frame["after"] = state.after
            if state.after_epoch is not None:
                frame["after_epoch"] = state.after_epoch
        return frame

    def _send_frame(self, message_id):
        pending = self._unacked[message_id]
        return {"type": "send", "room": pending.room, "id": message_id, "body": pending.body}

    def _event(self, kind, **fields):
        event = {"event": kind, "t": round(time.monotonic(), 6)}
        event.update(fields)
        self._events.append(event)


# ---- command line -------------------------------------------------------------------


def _print(event):
    print(json.dumps(event), flush=True)


def _run_send(client, room, body, deadline):
    message_id = client.send(room, body)
    while time.monotonic() < deadline:
        for event in client.poll(deadline - time.monotonic()):
            _print(event)
            if event["event"] == "ack" and event["id"] == message_id:
                return 0
    log.error("no ack for %s in time", message_id)
    return 3


def _run_load(client, room, count, rate, deadline):
    """Sends "load 0" .. "load count-1" at `rate` per second; returns once all are acked."""
    interval = 1.0 / rate
    next_at = time.monotonic()
    sent, acked = 0, 0
    while acked < count:
        now = time.monotonic()
        if now >= deadline:
            log.error("%d of %d acknowledged in time", acked, count)
            return 3
        if sent < count and now >= next_at and client.can_send:
            client.send(room, f"load {sent}")
            sent += 1
            # Keep the rate; after a stall catch up by at most one message, not a burst.
            next_at = max(next_at + interval, now - interval)
            continue
        wait = deadline - now
        if sent < count and client.can_send:
            wait = min(wait, max(0.0, next_at - now))
        for event in client.poll(wait):
            _print(event)
            if event["event"] == "ack":
                acked += 1
    _print({"event": "done", "acked": acked, "t": round(time.monotonic(), 6)})
    return 0


def _run_listen(client):
    for event in client.events():
        _print(event)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", action="append", required=True, help="host:port (repeat)")
    parser.add_argument("--nick", required=True)
    parser.add_argument("--session", help="stable session id (default: random)")
    parser.add_argument("--token", help="for nodes that require authentication")
    parser.add_argument("--room", action="append", required=True, help="room to join (repeat)")
    parser.add_argument("--after", type=int, help="replay the rooms from this seq (0: all)")
    parser.add_argument("--tls", action="store_true", help="speak TLS to the nodes")
    parser.add_argument("--ca", help="PEM CA file for --tls (default: the system's)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds, --send/--load")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--send", metavar="TEXT", help="send one message, exit once acked")
    mode.add_argument("--load", type=int, metavar="N", help='send "load 0".."load N-1"')
    mode.add_argument("--listen", action="store_true", help="print messages until killed")
    parser.add_argument("--rate", type=float, default=40.0, help="--load messages per second")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be positive")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="pbchat_client %(asctime)s %(message)s"
    )
    tls_context = None
    if args.tls or args.ca:
        tls_context = ssl.create_default_context(cafile=args.ca)
    try:
        client = Client(args.server, args.nick, args.session, args.token, tls_context)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    for room in args.room:
        client.join(room, after=args.after)
    deadline = time.monotonic() + args.timeout
    try:
        if args.send is not None:
            return _run_send(client, args.room[0], args.send, deadline)
        if args.load is not None:
            return _run_load(client, args.room[0], args.load, args.rate, deadline)
        return _run_listen(client)
    except FatalError as error:
        log.error("refused: %s", error)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly, as Python's
        # documentation recommends, without a second error when stdout is flushed at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
