#!/usr/bin/env python3
# Measures pbchatd CPU per delivery: N members in one room over TCP or WebSocket, one of
# them sending with 64 sends in flight for a few seconds; server CPU (utime + stime from
# /proc) divided by the messages delivered to the members in that time.
# Usage: start pbchatd (with [web] for ws), then: scripts/delivery_cpu.py 100 tcp|ws [SECONDS]
#   Ports: $PBCHAT_TCP_PORT (7400), $PBCHAT_WEB_PORT (7480); the node: $PBCHAT_PID, else
#   the newest pbchatd. The generator is Python: it measures the server's cost per delivery,
#   not the server's top speed.
import json, os, selectors, socket, subprocess, sys, time

pid = int(os.environ.get("PBCHAT_PID") or subprocess.check_output(["pgrep", "-n", "pbchatd"]).split()[0])
TCP_PORT = int(os.environ.get("PBCHAT_TCP_PORT", "7400"))
WEB_PORT = int(os.environ.get("PBCHAT_WEB_PORT", "7480"))
WINDOW = 64
TICKS = os.sysconf("SC_CLK_TCK")

def cpu_ticks():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

def ws_message(text):
    # A masked client text frame; a zero mask leaves the payload as is.
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    else:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload

class Member:
    def __init__(self, i, transport):
        self.ws = transport == "ws"
        self.buf = b""
        port = WEB_PORT if self.ws else TCP_PORT
        self.sock = socket.create_connection(("127.0.0.1", port))
        if self.ws:
            self.sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += self.sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 101"), head
            self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.say({"type": "hello", "version": 1, "nick": f"d{i}", "session": f"d{i}-{time.time()}"})
        self.say({"type": "join", "room": "cpu"})

    def say(self, frame):
        text = json.dumps(frame)
        self.sock.sendall(ws_message(text) if self.ws else (text + "\n").encode())

    def frames(self, data):
        self.buf += data
        out = []
        if not self.ws:
            *lines, self.buf = self.buf.split(b"\n")
            return lines
        while len(self.buf) >= 2:
            n, at = self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4: break
                n, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10: break
                n, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + n: break
            if self.buf[0] & 0x0F == 1:
                out.append(self.buf[at:at + n])
            self.buf = self.buf[at + n:]
        return out

n = int(sys.argv[1])
transport = sys.argv[2]
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
members = [Member(i, transport) for i in range(n)]
sel = selectors.DefaultSelector()
for m in members:
    sel.register(m.sock, selectors.EVENT_READ, m)
joined = 0
while joined < n:
    for key, _ in sel.select(5):
        joined += sum(1 for f in key.data.frames(key.data.sock.recv(1 << 16)) if b'"type":"joined"' in f)
sender, in_flight, sent, delivered = members[0], 0, 0, 0
start_ticks, start = cpu_ticks(), time.monotonic()
while time.monotonic() - start < seconds:
    while in_flight < WINDOW:
        sender.say({"type": "send", "room": "cpu", "id": f"c{sent}", "body": "x" * 64})
        sent += 1
        in_flight += 1
    for key, _ in sel.select(1):
        for f in key.data.frames(key.data.sock.recv(1 << 16)):
            if b'"type":"msg"' in f:
                delivered += 1
            elif b'"type":"ack"' in f:
                in_flight -= 1
ticks, elapsed = cpu_ticks() - start_ticks, time.monotonic() - start
print(f"{n} {transport} members: {delivered} deliveries in {elapsed:.1f} s, server CPU "
      f"{ticks / TICKS:.2f} s, {ticks / TICKS * 1e9 / max(delivered, 1):.0f} ns per delivery")
