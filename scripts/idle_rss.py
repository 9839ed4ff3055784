#!/usr/bin/env python3
# Measures pbchatd RSS per idle client: N connections say hello and join, then sit idle.
# Usage: start pbchatd -c config/primary.toml, then: scripts/idle_rss.py 10000 [tcp|ws]
#   (0 clients: the idle node's RSS alone)
#   tcp (default): clients on [client] listen (127.0.0.1:7400, or $PBCHAT_TCP_PORT)
#   ws: WebSocket clients on [web] listen (127.0.0.1:7480, or $PBCHAT_WEB_PORT), one frame
#       per text message
# The node: $PBCHAT_PID, else the newest pbchatd. Raise max_connections_per_ip past N.
import socket, json, os, sys, time, subprocess
pid = int(os.environ.get("PBCHAT_PID") or subprocess.check_output(["pgrep","-n","pbchatd"]).split()[0])
TCP_PORT = int(os.environ.get("PBCHAT_TCP_PORT", "7400"))
WEB_PORT = int(os.environ.get("PBCHAT_WEB_PORT", "7480"))
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])

def ws_message(text):
    # A client's text frame (FIN, opcode 1), masked as RFC 6455 requires; the mask is zero,
    # which leaves the payload as is (fine for a measurement, never for a browser).
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + b"\0\0\0\0" + payload

def connect(i, transport):
    hello = json.dumps({"type":"hello","version":1,"nick":f"u{i}","session":f"s{i}"})
    join = json.dumps({"type":"join","room":f"room{i%100}"})
    if transport == "tcp":
        s = socket.create_connection(("127.0.0.1", TCP_PORT))
        s.sendall((hello + "\n" + join + "\n").encode())
        return s
    s = socket.create_connection(("127.0.0.1", WEB_PORT))
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{WEB_PORT}\r\n".encode() + b"Upgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(ws_message(hello) + ws_message(join))
    return s

before = rss()
n = int(sys.argv[1])
transport = sys.argv[2] if len(sys.argv) > 2 else "tcp"
socks = [connect(i, transport) for i in range(n)]
time.sleep(3)
for s in socks:
    s.setblocking(False)
    try:
        while s.recv(1<<20): pass
    except BlockingIOError: pass
time.sleep(1)
after = rss()
per = f", {(after-before)*1024/n:.0f} bytes per connection" if n else " (the node alone)"
print(f"{n} idle {transport} clients: RSS {before} KiB -> {after} KiB{per}")
