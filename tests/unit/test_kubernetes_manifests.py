"""The Kubernetes deployment in deploy/kubernetes (docs/kubernetes.md): the
example overlay, rendered, is valid Kubernetes and keeps the contract the
agent relies on.

Rendering: the kustomizations use only resources, namespace, images,
configMapGenerator (files) and JSON 6902 patches, which `render` below applies
the way kustomize does (generated ConfigMaps get kustomize's content hash as a
name suffix, and the DaemonSet's references follow). Where `kubectl` is on the
PATH (its built-in kustomize), its rendering must equal ours, so the renderer
here stays honest; where it is not, ours alone is checked.

Validation: every rendered resource with `kubernetes-validate --strict` against
K8S_VERSION (the newest kubernetes-validate 1.37.0 covers); a missing tool fails the
test. Then the semantic contract: host network, exactly NET_ADMIN and NET_RAW,
no API token, configuration from ConfigMaps and Secrets, probes that never
restart an agent for its node's ill health, and each node's file loading with
vigil.config (and its router's), with real heartbeat keys and placeholder
certificates and passwords where the Secrets would put them.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import inspect
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from vigil.agent.child import ChildProcess
from vigil.cli.agent_cmd import load_node_config
from vigil.core.timing import Timing
from vigil.identity import make_cluster_keys

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAY = DEPLOY / "overlays" / "example"
DOC = ROOT / "docs" / "kubernetes.md"
K8S_VERSION = "1.37.0"
NAMESPACED = {"ServiceAccount", "ConfigMap", "DaemonSet", "PodDisruptionBudget"}
CLUSTER_SCOPED = {"Namespace"}
SECRETS_DIR = "/etc/vigil/secrets/"


# -- rendering ---------------------------------------------------------------------------------

def render(folder: Path) -> list[dict]:
    """The resources `kustomize build folder` gives, for the features these kustomizations use."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "namespace", "resources", "images", "configMapGenerator", "patches"}
    assert not unknown, f"{folder}: this test's renderer does not apply {sorted(unknown)}: teach it"
    objs: list[dict] = []
    for r in k.get("resources", []):
        p = folder / r
        objs += render(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    renamed = {}
    for g in k.get("configMapGenerator", []):
        assert set(g) <= {"name", "files"}, f"configMapGenerator {g['name']}: only `files` is rendered here"
        data = {Path(f).name: (folder / f).read_text() for f in g["files"]}
        renamed[g["name"]] = f"{g['name']}-{_kustomize_hash(data)}"
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": renamed[g["name"]]},
                     "data": data})
    for p in k.get("patches", []):
        targets = [o for o in objs if o["kind"] == p["target"]["kind"]
                   and o["metadata"]["name"] == p["target"]["name"]]
        assert targets, f"patch target {p['target']} is not among the resources"
        for o in targets:
            for op in yaml.safe_load(p["patch"]):
                _json_patch(o, op)
    for o in objs:
        assert o["kind"] in NAMESPACED | CLUSTER_SCOPED, f"{o['kind']}: unknown to this renderer"
        if "namespace" in k and o["kind"] in NAMESPACED:
            o["metadata"]["namespace"] = k["namespace"]
        spec = o["spec"]["template"]["spec"] if o["kind"] == "DaemonSet" else None
        if spec is None:
            continue
        for c in spec["containers"]:
            name, _, tag = c["image"].partition(":")
            for i in k.get("images", []):
                if i["name"] == name:
                    c["image"] = f"{i.get('newName', name)}:{i.get('newTag', tag)}"
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] in renamed:
                v["configMap"]["name"] = renamed[v["configMap"]["name"]]
    return objs


def _kustomize_hash(data: dict[str, str]) -> str:
    """kustomize's ConfigMap name suffix (api/hasher): sha256 of Go's JSON of
    {kind, name, data}, its first 10 hex digits with 0 1 3 a e swapped for
    letters. kustomize 5 hashes a generated ConfigMap before naming it: the
    name is empty (checked against kubectl's kustomize 5.5 by the test below)."""
    doc = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"),
                     ensure_ascii=False)
    doc = doc.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # as Go escapes them
    return hashlib.sha256(doc.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def _json_patch(doc: dict, op: dict) -> None:
    assert op["op"] in ("add", "replace"), f"JSON patch op {op['op']}: not rendered here"
    *parents, last = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    node = doc
    for t in parents:
        node = node[int(t)] if isinstance(node, list) else node[t]
    value = copy.deepcopy(op["value"])
    if isinstance(node, list):
        if last == "-":
            node.append(value)
        elif op["op"] == "add":
            node.insert(int(last), value)
        else:
            node[int(last)] = value
    else:
        assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
        node[last] = value


def _by_key(objs: list[dict]) -> dict[tuple, dict]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}


@pytest.fixture(scope="module")
def objs() -> list[dict]:
    return render(OVERLAY)


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


@pytest.fixture(scope="module")
def pod(objs) -> dict:
    return one(objs, "DaemonSet")["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def agent(pod) -> dict:
    assert [c["name"] for c in pod["containers"]] == ["agent"] and not pod.get("initContainers")
    return pod["containers"][0]


def configmap(objs: list[dict], volume: dict) -> dict:
    name = volume["configMap"]["name"]
    return next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)


def volume(pod: dict, agent: dict, mount_path: str) -> dict:
    m = next(m for m in agent["volumeMounts"] if m["mountPath"] == mount_path)
    return next(v for v in pod["volumes"] if v["name"] == m["name"])


def test_our_rendering_equals_kubectl_kustomize(objs):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the overlay is rendered by this test alone")
    r = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert _by_key([d for d in yaml.safe_load_all(r.stdout) if d]) == _by_key(objs)


# -- schema ------------------------------------------------------------------------------------

def test_every_resource_passes_kubernetes_validate_strict(objs, tmp_path):
    tool = Path(sys.executable).with_name("kubernetes-validate")
    assert tool.exists(), f"{tool} is missing: pip install kubernetes-validate (the `test` extra)"
    f = tmp_path / "rendered.yaml"
    f.write_text(yaml.safe_dump_all(objs))
    r = subprocess.run([str(tool), "--strict", "-k", K8S_VERSION, str(f)], capture_output=True, text=True,
                       timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # A kind it has no schema for is only a WARN with status 0: every resource must have passed.
    version = re.escape(K8S_VERSION.rsplit(".", 1)[0])
    passed = set(re.findall(rf"passed for resource (\S+) against version {version}$", out, re.M))
    assert passed == {f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objs}, out
    assert "WARN" not in out and "ERROR" not in out, out


# -- the contract ------------------------------------------------------------------------------

def test_the_agent_runs_on_the_host_network(pod):
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not pod.get("hostPID") and not pod.get("hostIPC")


def test_it_holds_net_admin_and_net_raw_and_nothing_else(pod, agent):
    sc = agent["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "securityContext" not in pod  # no pod-wide fsGroup: it would open the 0400 secrets to a group


def test_no_kubernetes_api_access(objs, pod):
    account = one(objs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def test_the_namespace_admits_what_the_agent_needs(objs):
    ns = one(objs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert all(o["metadata"]["namespace"] == ns["metadata"]["name"] for o in objs if o["kind"] in NAMESPACED)


def test_each_node_reads_its_own_file_from_a_configmap(objs, pod, agent):
    assert agent["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    assert agent["command"][:2] == ["/usr/bin/tini", "--"]
    assert agent["command"][2:] == ["vigil", "agent", "--config", "/etc/vigil/nodes/$(NODE_NAME).yaml"]
    nodes = configmap(objs, volume(pod, agent, "/etc/vigil/nodes"))
    for key, text in nodes["data"].items():
        assert yaml.safe_load(text)["node"] == key.removesuffix(".yaml"), f"{key} is another node's file"


def test_keys_and_passwords_come_from_secrets_no_one_else_reads(pod, agent):
    secrets = volume(pod, agent, "/etc/vigil/secrets")["projected"]
    assert all(set(s) == {"secret"} for s in secrets["sources"])
    assert secrets["defaultMode"] & 0o077 == 0  # vigil.files refuses a secret open to group or others
    assert all(m["readOnly"] for m in agent["volumeMounts"] if m["mountPath"].startswith("/etc/vigil"))


def test_only_the_state_and_the_models_come_from_the_host(pod, agent):
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert host == {"state": "/var/lib/vigil", "models": "/srv/models"}
    assert mounts["models"]["readOnly"] is True and not mounts["state"].get("readOnly")


def test_scheduling_gpu_nodes_one_at_a_time(objs, pod, agent):
    ds = one(objs, "DaemonSet")
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"] == {"vigil-ha/member": "true"}
    term, = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 8  # the overlay's nodes: 8 GPUs each
    assert "cpu" not in agent["resources"]["limits"]  # throttling would delay heartbeats
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    pdb = one(objs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"] == labels


def test_the_grace_period_covers_a_graceful_stop(pod):
    t = Timing()
    grace = inspect.signature(ChildProcess).parameters["grace"].default
    # leader key (2 x etcd_timeout), event flush and lease revocation (etcd_timeout each),
    # then the router and the inference server (SIGTERM, then SIGKILL after `grace`)
    stop = 4 * t.etcd_timeout + 2 * grace
    assert pod["terminationGracePeriodSeconds"] >= 2 * stop


# -- the probes, run for real against a stand-in for the agent's API ---------------------------

class _Api(http.server.BaseHTTPRequestHandler):
    statuses: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.statuses.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _probe(agent: dict, which: str, port: int, statuses: dict[str, int]) -> bool:
    """Whether the container's `which` probe passes against an API answering `statuses`."""
    _Api.statuses = statuses
    python, flag, script = agent[which]["exec"]["command"]
    assert (python, flag) == ("python3", "-c") and "127.0.0.1:8008" in script
    r = subprocess.run([sys.executable, "-c", script.replace("127.0.0.1:8008", f"127.0.0.1:{port}")],
                       capture_output=True, text=True, timeout=15)
    return r.returncode == 0


def test_liveness_restarts_only_an_agent_that_does_not_answer(agent, api):
    port = api.server_address[1]
    assert _probe(agent, "livenessProbe", port, {"/health": 200})
    assert _probe(agent, "livenessProbe", port, {"/health": 503})  # an unhealthy node: leave its agent be
    api.shutdown()
    api.server_close()
    assert not _probe(agent, "livenessProbe", port, {})
    assert agent["livenessProbe"]["periodSeconds"] * agent["livenessProbe"]["failureThreshold"] >= 60


def test_ready_means_joined_and_healthy(agent, api):
    port = api.server_address[1]
    assert _probe(agent, "readinessProbe", port, {"/leader": 200, "/standby": 503})
    assert _probe(agent, "readinessProbe", port, {"/leader": 503, "/standby": 200})
    assert not _probe(agent, "readinessProbe", port, {"/leader": 503, "/standby": 503})


# -- the nodes' files --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(objs, tmp_path_factory):
    """Each node's configuration, loaded by vigil from where the pod would have it
    (prefixed by a temporary folder), with the router file it names."""
    root = tmp_path_factory.mktemp("pod")
    spec = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    texts = {}
    for mount in ("/etc/vigil/nodes", "/etc/vigil/routers"):
        folder = root / mount.lstrip("/")
        folder.mkdir(parents=True)
        for key, text in configmap(objs, volume(spec, container, mount))["data"].items():
            texts[f"{mount}/{key}"] = text
            (folder / key).write_text(text.replace("/etc/vigil/", f"{root}/etc/vigil/"))
    secrets = root / SECRETS_DIR.lstrip("/")
    secrets.mkdir(parents=True)
    nodes = sorted(k.removesuffix(".yaml")
                   for k in configmap(objs, volume(spec, container, "/etc/vigil/nodes"))["data"])
    make_cluster_keys(secrets, nodes)  # NODE.key and cluster.keyring, as `vigil keygen` makes them
    referenced = {f for text in texts.values() for f in re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", text)}
    for name in referenced - {p.name for p in secrets.iterdir()}:  # certificates, keys, passwords
        (secrets / name).write_text(f"placeholder for {name}\n")
        (secrets / name).chmod(0o600)
    return {n: load_node_config(str(root / "etc/vigil/nodes" / f"{n}.yaml")) for n in nodes}, texts, root


def test_every_node_file_loads_with_its_router(loaded):
    from vigil.router.config import load_router_config

    configs, _, _ = loaded
    assert len(configs) >= 3
    routers = {node: load_router_config(cfg.router_config) for node, cfg in configs.items()}
    for node, cfg in configs.items():
        assert cfg.node == node and cfg.etcd.user == node  # the per-node etcd role
        assert cfg.keys.signing.node == node
        assert Path(cfg.router_config).name == f"{node}.yaml"
        assert {p.name for p in cfg.peers} == set(configs) - {node}
        assert {(o.address, o.port) for o in cfg.observers} == {
            (r.heartbeat_address, r.heartbeat_port) for r in routers.values()}  # every router hears every agent
        assert cfg.watchdog.mode == "off"  # no /dev/watchdog in a container without privileges
        assert cfg.inference and cfg.inference.user is None  # no SETUID/SETGID to drop to another user
        assert (cfg.api_host, cfg.api_port) == ("127.0.0.1", 8008)  # where the probes look
        assert cfg.data_dir == "/var/lib/vigil"  # the hostPath
    assert len({(c.cluster, c.vips) for c in configs.values()}) == 1
    assert len({r.cluster for r in routers.values()} | {c.cluster for c in configs.values()}) == 1


def test_every_port_bound_is_declared_and_unprivileged(loaded, agent):
    from vigil.router.config import load_router_config

    configs, _, _ = loaded
    used = set()
    for cfg in configs.values():
        router = load_router_config(cfg.router_config)
        used |= {(cfg.api_port, "TCP"), (cfg.heartbeat_port, "UDP"), (urlparse(cfg.inference.url).port, "TCP"),
                 (router.listen_port, "TCP"), (router.admin_port, "TCP"), (router.heartbeat_port, "UDP")}
    declared = {(p["containerPort"], p["protocol"]) for p in agent["ports"]}
    assert declared == used
    assert min(port for port, _ in used) >= 1024  # the container has no NET_BIND_SERVICE


def test_every_secret_file_is_documented(loaded):
    _, texts, _ = loaded
    doc = DOC.read_text()
    names = {f for text in texts.values() for f in re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", text)}
    generic = {re.sub(r"^gpu-\d+", "NODE", n) for n in names}  # the doc writes NODE for a node's name
    missing = sorted(n for n in generic if n not in doc)
    assert not missing, f"docs/kubernetes.md does not say where these come from: {missing}"
