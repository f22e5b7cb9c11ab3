import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def on_sigterm(signum, frame):
    print(f"main.py: SIGTERM received by pid {os.getpid()}, exiting", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_sigterm)
HTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
