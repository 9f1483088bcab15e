"""scripts/package.sh: the wheel, the sdist and the Debian package (nfpm).

One build per module (into a temporary --out; the third-party libraries of the
packaged venv come from package.sh's cache in build/package/, so only a first
build on a machine is cold). The .deb is checked with lintian (no E:),
dpkg-deb (contents, modes, control fields), on its extracted tree (the venv is
relocated to /opt/vigil: no build path anywhere, shebangs on
/opt/vigil/bin/python3, and it runs from wherever it is extracted), and its
maintainer scripts are run against recording stand-ins for systemctl and
friends. A missing tool is a failure that says what to install, never a skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import vigil

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "package.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
# what to install when a tool is missing (package.sh installs its own build tools)
TOOLS = {"dpkg-deb": "apt-get install dpkg",
         "lintian": "apt-get install lintian (scripts/package.sh --lint installs it too)"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: {TOOLS.get(tool, tool)}"
    return path


@dataclass
class Build:
    wheel: Path
    sdist: Path
    deb: Path
    seconds: float


def package(out: Path, request, *args: str) -> Build:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, (
        f"scripts/package.sh {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    line = f"{' '.join(['scripts/package.sh', *args])}: built in {seconds:.1f} s"
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")
    paths = [Path(p) for p in proc.stdout.split()]
    assert len(paths) == 3, f"package.sh should print wheel, sdist and deb, one a line; printed: {proc.stdout!r}"
    for p in paths:
        assert p.is_file() and p.parent == out, f"package.sh printed {p}, which is not a file in {out}"
    return Build(*paths, seconds)


@pytest.fixture(scope="module")
def built(tmp_path_factory, request) -> Build:
    need("dpkg-deb")
    return package(tmp_path_factory.mktemp("dist"), request)


@pytest.fixture(scope="module")
def tree(built, tmp_path_factory) -> Path:
    """The .deb's data archive, extracted."""
    root = tmp_path_factory.mktemp("deb-tree")
    subprocess.run(["dpkg-deb", "-x", str(built.deb), str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def control(built, tmp_path_factory) -> Path:
    """The .deb's control archive (control file, maintainer scripts), extracted."""
    root = tmp_path_factory.mktemp("deb-control")
    subprocess.run(["dpkg-deb", "-e", str(built.deb), str(root)], check=True)
    return root


def units() -> list[str]:
    return sorted(p.name for p in (ROOT / "deploy" / "systemd").glob("*.service"))


# ---- names, lintian, control fields ---------------------------------------

def test_artefact_names_carry_the_source_version(built):
    v = vigil.__version__
    assert built.wheel.name == f"vigil_ha-{v}-py3-none-any.whl"
    assert built.sdist.name == f"vigil_ha-{v}.tar.gz"
    assert built.deb.name == f"vigil-ha_{v}_amd64.deb"


def test_lintian_reports_no_errors(built):
    need("lintian")
    proc = subprocess.run(["lintian", str(built.deb)], capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert not errors, f"lintian errors on {built.deb.name}:\n{proc.stdout}\n{proc.stderr}"


def test_control_fields(built):
    fields = {}
    for name in ("Package", "Version", "Architecture", "Depends", "Recommends", "Suggests"):
        fields[name] = subprocess.run(["dpkg-deb", "-f", str(built.deb), name], check=True,
                                      capture_output=True, text=True).stdout.strip()
    assert fields["Package"] == "vigil-ha"
    assert fields["Version"] == vigil.__version__
    assert fields["Architecture"] == "amd64"
    depends = [d.strip() for d in fields["Depends"].split(",")]
    for dep in ("python3 (>= 3.11)", "python3 (<< 3.12)", "iproute2", "nftables", "ipmitool"):
        assert dep in depends, f"Depends lacks {dep}: {fields['Depends']}"
    assert any(d.startswith("libc6 (>= ") for d in depends), f"no libc6 from dpkg-shlibdeps: {depends}"
    assert [d.strip() for d in fields["Recommends"].split(",")] == ["etcd-server", "etcd-client"]
    assert fields["Suggests"] == "haproxy"


# ---- contents ---------------------------------------------------------------

def listing(deb: Path) -> dict[str, tuple[str, str, str]]:
    """path -> (mode string, owner/group, symlink target or '') from dpkg-deb -c."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    entries = {}
    for line in out.splitlines():
        mode, owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ")
        entries[path.removeprefix(".").rstrip("/") or "/"] = (mode, owner, target)
    return entries


def test_contents_and_modes(built):
    entries = listing(built.deb)
    mode, owner, _ = entries["/opt/vigil/bin/vigil"]
    assert mode == "-rwxr-xr-x" and owner == "root/root", entries["/opt/vigil/bin/vigil"]
    assert entries["/usr/bin/vigil"][0].startswith("l") and entries["/usr/bin/vigil"][2] == "/opt/vigil/bin/vigil"
    assert entries["/opt/vigil/bin/python3"][2] == SYSTEM_PYTHON, "the venv must run Debian's python3"
    assert entries["/etc/vigil"][:2] == ("drwx------", "root/root")
    assert entries["/var/lib/vigil"][0] == "drwxr-x---"
    expected = units()
    assert expected, "deploy/systemd/ has no *.service files: the package would ship no units"
    shipped = sorted(p.rsplit("/", 1)[1] for p in entries if p.startswith("/lib/systemd/system/"))
    assert shipped == expected
    for unit in expected:
        assert entries[f"/lib/systemd/system/{unit}"][:2] == ("-rw-r--r--", "root/root")
    for doc in ("/usr/share/doc/vigil-ha/copyright", "/usr/share/doc/vigil-ha/changelog.gz",
                "/usr/share/man/man1/vigil.1.gz", "/usr/share/lintian/overrides/vigil-ha"):
        assert doc in entries, f"{doc} is missing"
    compiled = [p for p in entries if p.endswith(".pyc") or "/__pycache__" in p]
    assert not compiled, f"byte-code is compiled by postinst, never shipped: {compiled[:5]}"
    torch = [p for p in entries if "/site-packages/torch" in p or "/site-packages/pytest" in p]
    assert not torch, "the model and test extras must stay out of the package"
    assert any("/site-packages/pymodbus/" in p for p in entries), "the fencing extra (pymodbus) is missing"


def test_the_venv_is_relocated_to_opt_vigil(tree):
    build_paths = [str(ROOT).encode(), str(ROOT.resolve()).encode()]
    leaks = []
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(b in data for b in build_paths):
                leaks.append(str(path.relative_to(tree)))
    assert not leaks, f"files in the .deb hold the build path {ROOT}: {leaks}"
    venv = tree / "opt" / "vigil"
    bin_dir = venv / "bin"
    scripts = [p for p in bin_dir.iterdir() if p.is_file() and not p.is_symlink()
               and p.read_bytes().startswith(b"#!")]
    assert bin_dir / "vigil" in scripts
    for script in scripts:
        first = script.read_text().splitlines()[0]
        assert first == "#!/opt/vigil/bin/python3", f"{script.name}: shebang {first!r}"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg and "/opt/vigil" in cfg, cfg
    assert 'VIRTUAL_ENV="/opt/vigil"' in (bin_dir / "activate").read_text() or \
        "VIRTUAL_ENV=/opt/vigil" in (bin_dir / "activate").read_text()


def test_the_extracted_venv_runs_with_debian_python(tree):
    # bin/python3 -> /usr/bin/python3, and pyvenv.cfg beside bin/ makes the
    # extracted directory the prefix: the venv's own libraries, wherever it is
    assert os.access(SYSTEM_PYTHON, os.X_OK), f"{SYSTEM_PYTHON} is missing: apt-get install python3"
    python = tree / "opt" / "vigil" / "bin" / "python3"
    proc = subprocess.run([str(python), "-B", "-I", "-c",
                           "import sys, vigil, aiohttp, yaml, uvloop, pymodbus, pyroute2, cryptography;"
                           "from vigil.cli.main import main; sys.argv = ['vigil', '--version']; main()"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vigil {vigil.__version__}"


# ---- maintainer scripts -------------------------------------------------------

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >>"$RECORD"
case "$(basename "$0")" in
  getent) exit 2 ;;   # no such user or group yet
  deb-systemd-helper) [ "$1" = debian-installed ] && exit 1 ;;
esac
exit 0
"""
STANDINS = ("getent", "groupadd", "useradd", "deb-systemd-helper",
            "deb-systemd-invoke", "systemctl")


def run_script(control: Path, tmp: Path, script: str, *args: str, systemd: bool = True) -> list[str]:
    """Run a maintainer script with its system paths moved under `tmp` and the
    commands it calls replaced by recorders; returns the calls it made."""
    fake = tmp / "fakebin"
    fake.mkdir(exist_ok=True)
    for name in STANDINS:
        (fake / name).write_text(RECORDER)
        (fake / name).chmod(0o755)
    run_dir = tmp / "run-systemd"
    if systemd:
        run_dir.mkdir(exist_ok=True)
    elif run_dir.exists():
        run_dir.rmdir()
    text = (control / script).read_text()
    for real, moved in (("/run/systemd/system", run_dir), ("/var/lib/vigil", tmp / "state"),
                        ("/opt/vigil", tmp / "opt-vigil")):
        text = text.replace(real, str(moved))
    copy = tmp / script
    copy.write_text(text)
    record = tmp / "record"
    record.write_text("")
    env = {"PATH": f"{fake}:/usr/sbin:/usr/bin:/sbin:/bin", "RECORD": str(record)}
    proc = subprocess.run(["sh", str(copy), *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed: {proc.stderr}"
    return record.read_text().splitlines()


def test_maintainer_scripts_are_posix_sh_and_never_start_or_enable(control):
    for script in ("postinst", "prerm", "postrm"):
        text = (control / script).read_text()
        assert text.startswith("#!/bin/sh\n"), script
        assert re.search(r"^set -e$", text, re.M), f"{script} lacks set -e"
        assert "#UNITS#" not in text, f"{script}: package.sh left the #UNITS# placeholder"
        subprocess.run(["sh", "-n", str(control / script)], check=True)
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        bad = re.findall(r"systemctl\s+(?:--\S+\s+)*(?:start|enable|restart|reload-or-restart)\b"
                         r"|deb-systemd-invoke\s+(?:start|restart)\b|deb-systemd-helper\s+enable\b", code)
        assert not bad, f"{script} starts or enables a unit: {bad}"


def test_install_starts_nothing_and_upgrade_restarts_only_running_units(control, tmp_path):
    listed = " ".join(units())
    fresh = run_script(control, tmp_path, "postinst", "configure", "")
    assert "groupadd --system vigil" in fresh
    assert any(c.startswith("useradd --system --gid vigil --home-dir") and c.endswith(" vigil") for c in fresh)
    assert "systemctl --system daemon-reload" in fresh
    assert not [c for c in fresh if c.startswith("deb-systemd-invoke")], fresh
    upgrade = run_script(control, tmp_path, "postinst", "configure", "0.0.1")
    assert f"deb-systemd-invoke try-restart {listed}" in upgrade
    without_systemd = run_script(control, tmp_path, "postinst", "configure", "0.0.1", systemd=False)
    assert not [c for c in without_systemd if c.startswith(("deb-systemd-invoke", "systemctl"))]


def test_prerm_stops_units_on_remove_but_not_on_upgrade(control, tmp_path):
    listed = " ".join(units())
    assert run_script(control, tmp_path, "prerm", "upgrade", "9.9.9") == []
    assert run_script(control, tmp_path, "prerm", "remove") == [f"deb-systemd-invoke stop {listed}"]
    assert run_script(control, tmp_path, "prerm", "remove", systemd=False) == []


def test_postrm_purge_removes_the_state_directory(control, tmp_path):
    state = tmp_path / "state"
    (state / "sub").mkdir(parents=True)
    calls = run_script(control, tmp_path, "postrm", "remove")
    assert state.exists(), "remove keeps the state directory"
    assert "systemctl --system daemon-reload" in calls
    run_script(control, tmp_path, "postrm", "purge")
    assert not state.exists(), "purge removes the state directory"


# ---- wheel, sdist, --version ------------------------------------------------------

def test_wheel_declares_the_extras(built):
    with zipfile.ZipFile(built.wheel) as whl:
        meta = whl.read(f"vigil_ha-{vigil.__version__}.dist-info/METADATA").decode()
    assert "Provides-Extra: model" in meta and "Provides-Extra: fencing" in meta
    assert re.search(r'^Requires-Dist: torch[^;]*; extra == "model"$', meta, re.M), meta
    with tarfile.open(built.sdist) as sdist:
        names = sdist.getnames()
    top = f"vigil_ha-{vigil.__version__}"
    assert f"{top}/pyproject.toml" in names and f"{top}/src/vigil/__init__.py" in names


def test_wheel_installs_into_a_debian_python_venv(built, tmp_path):
    # a venv of Debian's python3; this test's own pip installs into it (--python),
    # which spares the seconds of ensurepip
    venv = tmp_path / "venv"
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert proc.returncode == 0, f"/usr/bin/python3 -m venv failed (apt-get install python3-venv?): {proc.stderr}"
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python3"), "install", "-q",
                          "--disable-pip-version-check", str(built.wheel)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([str(venv / "bin" / "vigil"), "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"vigil {vigil.__version__}", out


def test_version_option_builds_another_version_without_touching_the_tree(tmp_path, request):
    parts = vigil.__version__.split(".")
    bumped = ".".join(parts[:-1] + [str(int(parts[-1]) + 1)])
    watched = [ROOT / "pyproject.toml", ROOT / "src" / "vigil" / "__init__.py"]
    before = [p.read_bytes() for p in watched]
    b = package(tmp_path, request, "--version", bumped)
    assert [p.read_bytes() for p in watched] == before, "package.sh --version modified the working tree"
    assert b.deb.name == f"vigil-ha_{bumped}_amd64.deb" and b.wheel.name == f"vigil_ha-{bumped}-py3-none-any.whl"
    version = subprocess.run(["dpkg-deb", "-f", str(b.deb), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert version == bumped
    root = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(b.deb), str(root)], check=True)
    out = subprocess.run([str(root / "opt/vigil/bin/python3"), "-B", "-I", "-m", "vigil", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"vigil {bumped}", out
