import os
from http.server import BaseHTTPRequestHandler, HTTPServer

import mmh3


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"mmh3={mmh3.hash('ftl')} from {mmh3.__file__}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
