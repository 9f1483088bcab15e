"""Run one Vip action inside a namespace (`ip netns exec NS python -m
tests.system.vip_do ACTION ADDRESS/N IFACE [LIFETIME]`); prints one JSON line."""

from __future__ import annotations

import json
import sys

from vigil.resources.vip import Vip, VipError, parse_vip


def main() -> None:
    action, address, iface = sys.argv[1:4]
    vip = Vip(parse_vip({"address": address, "interface": iface}, "vip"))
    try:
        if action == "start":
            vip.start(int(sys.argv[4]))
        elif action == "refresh":
            vip.refresh(int(sys.argv[4]))
        elif action == "remove":
            vip.remove()
        elif action == "announce":
            vip.announce()
        print(json.dumps({"ok": True, "held": vip.held()}))
    except VipError as e:
        print(json.dumps({"ok": False, "error": str(e)}))


if __name__ == "__main__":
    main()
