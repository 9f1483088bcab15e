"""The status page (GET /ui) rendered by headless Chromium (Debian's; no
JavaScript build, nothing from a CDN): a healthy 3-node lab, then the same
page while the leader's agent is SIGKILLed and the others take over. For
each: a screenshot and the rendered DOM, checked for what an operator must
see (every member, the leader, the dead node suspected and failed, the
events), and how long from the kill the page took to show it.

Usage: python bench/status_page.py   (root: installs chromium if missing)
Writes bench/results/status_page.{json,md} and status_page_{healthy,failover}.png."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write  # noqa: E402

from vigil.lab import Lab  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,820", "--virtual-time-budget=4000"]


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        found = shutil.which("chromium")
    assert found, "chromium did not install"
    return found


def new_leader(api_url: str) -> str | None:
    with urllib.request.urlopen(api_url + "/cluster", timeout=5) as r:
        leader = json.load(r)["leader"]
    return leader["name"] if leader else None


def render(browser: str, url: str, png: Path, profile: Path) -> str:
    """Screenshot `url` into `png`, then return its DOM once its script has run."""
    base = [browser, *FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def main() -> int:
    browser = chromium()
    out = {}
    with tempfile.TemporaryDirectory(prefix="vigil-page-") as d:
        lab = Lab.up(Path(d) / "lab", 3)
        try:
            old = lab.leader()[0]
            viewer = next(n for n in lab.nodes if n.name != old)
            url = viewer.api_url + "/ui"
            dom = render(browser, url, RESULTS / "status_page_healthy.png", Path(d) / "p1")
            out["healthy"] = {"members_shown": [n.name for n in lab.nodes if f">{n.name}<" in dom],
                              "leader_shown": f"leader {old}" in dom, "loaded": 'data-loaded="yes"' in dom}
            t0 = time.time()
            lab.kill_agent(old)
            lab.wait_for(lambda: (new_leader(viewer.api_url) or old) != old, 60, "the page's data: a new leader")
            dom = render(browser, url, RESULTS / "status_page_failover.png", Path(d) / "p2")
            out["failover"] = {"shown_after_s": round(time.time() - t0, 2), "old_leader": old,
                               "suspect_shown": ">suspect<" in dom or "(suspect)" in dom,
                               "failed_shown": ">failed<" in dom, "event_shown": ">peer_suspected<" in dom,
                               "loaded": 'data-loaded="yes"' in dom}
        finally:
            lab.down()
    ok = (out["healthy"]["loaded"] and len(out["healthy"]["members_shown"]) == 3 and out["healthy"]["leader_shown"]
          and out["failover"]["loaded"] and out["failover"]["suspect_shown"] and out["failover"]["event_shown"])
    out["ok"] = ok
    version = subprocess.run([browser, "--version"], capture_output=True, text=True).stdout.strip()
    write("status_page", {**out, "chromium": version},
          [["page", "rendered", "what it shows"],
           ["healthy", str(out["healthy"]["loaded"]),
            f"members {', '.join(out['healthy']['members_shown'])}; leader shown: {out['healthy']['leader_shown']}"],
           ["failover", str(out["failover"]["loaded"]),
            f"{out['failover']['old_leader']} killed, page rendered {out['failover']['shown_after_s']} s later: "
            f"suspect {out['failover']['suspect_shown']}, failed {out['failover']['failed_shown']}, "
            f"peer_suspected event {out['failover']['event_shown']}"]],
          f"{version}, headless. Screenshots: status_page_healthy.png, status_page_failover.png.")
    print(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
