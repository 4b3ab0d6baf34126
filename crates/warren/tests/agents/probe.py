"""A test agent that reports what it can see and do from inside its sandbox.

It serves GET /healthz, /whoami, /env, /procs, /read?path=, /write?path=, /list?path=,
/connect?host=&port=, /fetch?port=&path= (a GET to 127.0.0.1), /alloc?mb=,
/threads?n=, /burn?ms= and /exit?code= on WARREN_AGENT_ADDR,
answering JSON. It never raises: every
attempt's outcome is reported, as "ok" or the exception's class name.
"""
import http.server
import json
import os
import socket
import threading
import time
import urllib.parse


def attempt(action):
    try:
        action()
        return "ok"
    except Exception as e:  # the outcome is the answer
        return type(e).__name__


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/healthz":
            return self.answer({"ok": True})
        if url.path == "/whoami":
            return self.answer({"uid": os.getuid(), "gid": os.getgid(), "tenant": os.environ.get("WARREN_TENANT_ID")})
        if url.path == "/env":
            return self.answer(dict(os.environ))
        if url.path == "/procs":
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            cmds = []
            for p in pids:
                try:
                    cmds.append(open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
            return self.answer({"pids": pids, "cmdlines": cmds})
        if url.path == "/read":
            return self.answer({"result": attempt(lambda: open(q["path"], "rb").read(1))})
        if url.path == "/write":
            return self.answer({"result": attempt(lambda: open(q["path"], "w").write("x"))})
        if url.path == "/list":
            return self.answer({"result": attempt(lambda: os.listdir(q["path"]))})
        if url.path == "/connect":
            def connect():
                socket.create_connection((q["host"], int(q["port"])), timeout=2).close()
            return self.answer({"result": attempt(connect)})
        if url.path == "/fetch":
            with socket.create_connection(("127.0.0.1", int(q["port"])), timeout=2) as c:
                c.sendall(f"GET {q['path']} HTTP/1.0\r\n\r\n".encode())
                reply = b"".join(iter(lambda: c.recv(65536), b""))
            return self.answer({"body": reply.split(b"\r\n\r\n", 1)[-1].decode()})
        if url.path == "/alloc":
            # Touch every page, so the memory is really used.
            block = bytearray(int(q["mb"]) * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            return self.answer({"allocated_mb": int(q["mb"])})
        if url.path == "/threads":
            threads, stop = [], threading.Event()
            try:
                for _ in range(int(q["n"])):
                    t = threading.Thread(target=stop.wait, daemon=True)
                    t.start()
                    threads.append(t)
            except RuntimeError:
                pass
            stop.set()
            # Gone before the answer, so the next request can have a thread again.
            for t in threads:
                t.join()
            return self.answer({"started": len(threads)})
        if url.path == "/exit":
            os._exit(int(q["code"]))
        if url.path == "/burn":
            cpu, end = time.process_time(), time.monotonic() + int(q["ms"]) / 1000
            while time.monotonic() < end:
                pass
            return self.answer({"cpu_ms": int((time.process_time() - cpu) * 1000)})
        self.send_response(404)
        self.end_headers()


host, port = os.environ["WARREN_AGENT_ADDR"].rsplit(":", 1)
http.server.ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
