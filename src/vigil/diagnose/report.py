"""`vigil report`: a support bundle (crm_report's, for Vigil), one tar.gz
with what a support engineer asks for first: versions, `vigil status`, the
event log, `vigil diagnose` and `vigil preflight` output, every node's
configuration and log, the kernel log. Nothing secret leaves the machine:
the files configurations name as secrets (keys, passwords, tokens) are
never copied, and their contents, inline secret fields and PEM private key
blocks are replaced by `<redacted>` in every file of the bundle.

Contract: `build()` writes the bundle atomically (a temporary file renamed)
and returns what it holds; a part that cannot be read is named in
MANIFEST.txt, never the end of the report."""

from __future__ import annotations

import io
import json
import os
import platform
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigil import __version__

SECRET_FILE_FIELDS = {"signing_key_file", "key_file", "password_file", "tokens_file", "api_token_file"}
SECRET_FIELDS = {"key", "password", "token", "tokens", "secret", "private_key"}
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
MIN_SECRET = 6  # a one-line secret file shorter than this is not worth a search
KEY_MATERIAL = 12  # in a structured secret file: values this long that are not words
REDACTED = "<redacted>"


@dataclass
class Redactor:
    """Every secret string seen so far; `text()` removes them from anything."""

    secrets: set[str] = field(default_factory=set)

    def learn_file(self, path: str | Path) -> None:
        try:
            content = Path(path).read_text(errors="replace")
        except OSError:
            return
        self.learn(content)

    def learn(self, content: str) -> None:
        """A one-line file is a secret whole; in a structured one (a key file's YAML,
        a tokens file) the values that look like key material: long, and not words."""
        stripped = content.strip()
        if "\n" not in stripped and len(stripped) >= MIN_SECRET:
            self.secrets.add(stripped)
        for text in stripped.splitlines():
            for word in re.split(r"[\s:=,\"']+", text.split("#", 1)[0]):
                if len(word) >= KEY_MATERIAL and not word.isalpha() and not word.startswith("-----"):
                    self.secrets.add(word)

    def text(self, s: str) -> str:
        s = PEM_PRIVATE.sub(REDACTED, s)
        for secret in sorted(self.secrets, key=len, reverse=True):
            s = s.replace(secret, REDACTED)
        return s

    def config(self, raw: Any) -> Any:
        """A parsed YAML document with its secret fields redacted, learning the secrets
        (inline values, and the contents of the files the secret fields name)."""
        if isinstance(raw, dict):
            out = {}
            for k, v in raw.items():
                if k in SECRET_FILE_FIELDS and isinstance(v, str):
                    self.learn_file(v)
                    out[k] = v  # the path is not secret; the file is never copied
                elif k in SECRET_FIELDS and isinstance(v, (str, int)) and not isinstance(v, bool):
                    self.learn(str(v))
                    out[k] = REDACTED
                else:
                    out[k] = self.config(v)
            return out
        if isinstance(raw, list):
            return [self.config(v) for v in raw]
        return raw


@dataclass
class Bundle:
    """Files for the archive (name -> text), and the manifest's lines."""

    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, text: str) -> None:
        self.files[name] = text

    def add_json(self, name: str, doc: Any) -> None:
        self.files[name] = json.dumps(doc, indent=2, default=str)

    def missing(self, what: str, why: object) -> None:
        self.notes.append(f"not included: {what}: {why}")


def versions(etcd: dict[str, str]) -> dict[str, Any]:
    return {"vigil": __version__, "python": platform.python_version(), "kernel": platform.release(),
            "machine": platform.machine(), "os": _os_release(), "etcd": etcd, "at": time.time()}


def _os_release() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "unknown"
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
    return m.group(1) if m else "unknown"


def write(bundle: Bundle, redactor: Redactor, out: Path, top: str) -> list[str]:
    """The tar.gz at `out` (atomically), every file redacted; returns the names."""
    names = sorted(bundle.files)
    manifest = [f"Vigil support bundle, {time.strftime('%Y-%m-%d %H:%M:%S %z')}", "",
                *(f"{n}" for n in names), "", *bundle.notes,
                "", f"secrets redacted: {len(redactor.secrets)} strings from the key, password and token "
                    "files the configurations name, inline secret fields, PEM private keys"]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name, text in [("MANIFEST.txt", "\n".join(manifest) + "\n"), *bundle.files.items()]:
            data = redactor.text(text).encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp, 0o600)
    os.replace(tmp, out)
    return ["MANIFEST.txt", *names]


def config_text(path: str, redactor: Redactor) -> str:
    """A configuration file, its secret fields redacted. Raises OSError, yaml.YAMLError."""
    raw = yaml.safe_load(Path(path).read_text())
    return yaml.safe_dump(redactor.config(raw), sort_keys=False)
