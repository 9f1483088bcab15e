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
import platform
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigil import __version__, errors
from vigil.errors import VigilError
from vigil.files import write_atomic

# In a field's name, any case: the words ConfigError hides values for, and misspellings and
# synonyms (a bundle is sent away, so it errs the other way).
SECRET_WORDS = (*errors.SECRET_WORDS, "pasw", "pwd", "credential", "auth")
PUBLIC_FILES = {"ca_file", "cert_file", "keyring_file"}  # named like secrets, hold public material
PUBLIC_FIELDS = {"node", "send", "name", "cluster"}  # in a key file: who and which key id, not the key
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)
SECRET_FLAG = re.compile(rf"^--?[\w-]*(?:{'|'.join(SECRET_WORDS)})[\w-]*$", re.I)
USERINFO = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")
MIN_SECRET = 4  # a shorter one-line secret would be found everywhere; it is still never copied
REDACTED = "<redacted>"


def secret_field(name: object) -> bool:
    n = str(name).lower()
    return any(w in n for w in SECRET_WORDS) and n not in PUBLIC_FILES


@dataclass
class Redactor:
    """Every secret string seen so far; `text()` removes them from anything.
    `unread` names the secret files it could not read (the bundle says so)."""

    secrets: set[str] = field(default_factory=set)
    unread: list[str] = field(default_factory=list)

    def learn_file(self, path: str | Path) -> None:
        try:
            content = Path(path).read_text(errors="replace")
        except OSError as e:
            self.unread.append(f"{path}: {e.strerror}")
            return
        self.learn(content)

    def learn(self, content: str) -> None:
        """A one-line secret whole; a structured one (YAML: a key file, a tokens map)
        by its values; a PEM key by its body's lines."""
        stripped = content.strip()
        if "\n" not in stripped and len(stripped) >= MIN_SECRET:
            self.secrets.add(stripped)  # a password file; a one-entry tokens map is also read below
        for m in PEM_PRIVATE.finditer(stripped):
            self.secrets.update(x.strip() for x in m.group(0).splitlines()[1:-1] if len(x.strip()) >= 16)
        try:
            doc = yaml.safe_load(stripped)
        except yaml.YAMLError:
            doc = None
        if isinstance(doc, (dict, list)):
            self._values(doc)
        elif "\n" in stripped:
            self.secrets.update(x.strip() for x in stripped.splitlines()
                                if len(x.strip()) >= 8 and not x.strip().startswith(("#", "-----")))

    def _values(self, doc: Any, name: str = "") -> None:
        if isinstance(doc, dict):
            for k, v in doc.items():
                self._values(v, str(k))
        elif isinstance(doc, list):
            for v in doc:
                self._values(v, name)
        elif name not in PUBLIC_FIELDS and isinstance(doc, (str, int)) and len(str(doc)) >= MIN_SECRET:
            self.secrets.add(str(doc))

    def text(self, s: str) -> str:
        s = PEM_PRIVATE.sub(REDACTED, s)
        s = USERINFO.sub(REDACTED + "@", s)
        for secret in sorted(self.secrets, key=len, reverse=True):
            s = s.replace(secret, REDACTED)
            escaped = json.dumps(secret)[1:-1]  # as it reads inside a JSON string
            if escaped != secret:
                s = s.replace(escaped, REDACTED)
        return s

    def config(self, raw: Any, base: Path) -> Any:
        """A parsed YAML document with its secrets redacted, learning them: inline
        values under secret-named keys (whatever their type), the contents of the
        files secret-named `*_file` keys name (relative to `base`, as the loader reads
        them), argv values after secret-named flags, URLs' user:password@."""
        if isinstance(raw, dict):
            out = {}
            for k, v in raw.items():
                if str(k).endswith("_file") and isinstance(v, str):
                    if secret_field(k):
                        self.learn_file(base / v)
                    out[k] = v  # the path is not secret; the file is never copied
                elif secret_field(k):
                    self._values(v)  # every value under it, whatever its shape
                    out[k] = REDACTED
                else:
                    out[k] = self.config(v, base)
            return out
        if isinstance(raw, list):
            return self._argv(raw) if all(isinstance(x, str) for x in raw) else [self.config(v, base) for v in raw]
        return raw

    def _argv(self, words: list[str]) -> list[str]:
        out = list(words)
        for i, w in enumerate(words):
            if "=" in w and SECRET_FLAG.match(w.split("=", 1)[0]):
                self.learn(w.split("=", 1)[1])
                out[i] = w.split("=", 1)[0] + "=" + REDACTED
            elif SECRET_FLAG.match(w) and i + 1 < len(words):
                self.learn(words[i + 1])
                out[i + 1] = REDACTED
        return out


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
    """The tar.gz at `out`, every file redacted, written atomically and 0600
    (vigil.files.write_atomic: the bundle's files are in memory already, so is
    their archive). Returns the names."""
    names = sorted(bundle.files)
    notes = bundle.notes + [f"not read, so not redacted by content: secret file {u}" for u in redactor.unread]
    manifest = [f"Vigil support bundle, {time.strftime('%Y-%m-%d %H:%M:%S %z')}", "",
                *(f"{n}" for n in names), "", *notes,
                "", f"secrets redacted: {len(redactor.secrets)} strings from the key, password and token "
                    "files the configurations name, secret-named fields and flags, URLs' passwords, "
                    "PEM private keys"]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in [("MANIFEST.txt", "\n".join(manifest) + "\n"), *bundle.files.items()]:
            data = redactor.text(text).encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    write_atomic(out, archive.getvalue(), 0o600)
    return ["MANIFEST.txt", *names]


def config_text(path: str, redactor: Redactor) -> str:
    """A configuration file, its secrets redacted. Raises OSError, or VigilError
    naming only where a file that is not YAML breaks (never its text: it may be a
    password's line)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise VigilError(f"not YAML ({type(e).__name__}" + (f" at line {mark.line + 1})" if mark else ")")) from None
    return yaml.safe_dump(redactor.config(raw, Path(path).parent), sort_keys=False)
