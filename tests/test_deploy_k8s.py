"""deploy/: Kubernetes manifests, the Ansible playbook and the systemd units, checked offline.

- every built-in manifest validates against the Kubernetes JSON schemas shipped in the
  ``kubernetes-validate`` package (strict: unknown fields are errors), for the oldest and
  the newest Kubernetes version it knows;
- the Prometheus Operator objects (CRDs, no schema there) against small schemas of our own,
  and every p2pdist metric, label and label value an alert uses is one the code exports;
- what the issue asks of the workloads (digest-pinned image, requests and limits, probes,
  hostPath store, rolling update, mirror port, containerd init container) by reading them;
- the ConfigMap's p2pdist.toml loads through ``load_config`` for both roles, with the
  environment the pods set; the Ansible template does too, rendered by Ansible itself;
- ``kustomize build`` (kubectl's) renders the same objects; ``ansible-playbook
  --syntax-check``; ``systemd-analyze verify`` of the units.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from _certs import TestCA

from p2pdist.cli.main import build_parser
from p2pdist.core.config import PeerConfig, TrackerConfig, load_config
from p2pdist.net.observe import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ANSIBLE = DEPLOY / "ansible"
STANDALONE = DEPLOY / "standalone"
VENV_BIN = Path(sys.executable).parent

DIGEST_IMAGE = re.compile(r"^ghcr\.io/p2pdist/p2pdist@sha256:[0-9a-f]{64}$")
CRD_GROUP = "monitoring.coreos.com/"
NAMESPACE = "p2pdist"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_objects() -> list[dict[str, Any]]:
    objs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc.setdefault("_file", path.name)  # removed before schema validation
                objs.append(doc)
    return objs


OBJECTS = load_objects()


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    matches = [c for c in pod_spec(workload).get(key, []) if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']}: no {key[:-1]} {name!r}"
    return matches[0]


WORKLOADS = [o for o in OBJECTS if o["kind"] in ("Deployment", "DaemonSet")]
PEER = find("DaemonSet", "p2pdist-peer")
TRACKER = find("Deployment", "p2pdist-tracker")
CONFIGMAP = find("ConfigMap", "p2pdist-config")
TLS_SECRET = "p2pdist-component-tls"


# --- schemas ---------------------------------------------------------------------------

def _k8s_versions() -> list[str]:
    versions = kubernetes_validate.utils.all_versions()
    return sorted({versions[0], versions[-1]})


@pytest.mark.parametrize("version", _k8s_versions())
@pytest.mark.parametrize("obj", [o for o in OBJECTS if not o["apiVersion"].startswith(CRD_GROUP)],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_manifest_validates_against_kubernetes_schema(obj, version):
    doc = {k: v for k, v in obj.items() if k != "_file"}
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['_file']}: {obj['kind']}/{obj['metadata']['name']} invalid for "
                    f"Kubernetes {version} at {where}: {exc.message}")


def test_schema_validation_catches_a_misspelt_field():
    doc = {k: v for k, v in PEER.items() if k != "_file"}
    doc = json.loads(json.dumps(doc))
    c = doc["spec"]["template"]["spec"]["containers"][0]
    c["livenesProbe"] = c.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(doc, _k8s_versions()[-1], strict=True)


def test_every_object_is_namespaced_and_labelled():
    kinds = {o["kind"] for o in OBJECTS}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "DaemonSet",
            "PrometheusRule"} <= kinds
    for o in OBJECTS:
        meta = o["metadata"]
        if o["kind"] != "Namespace":
            assert meta.get("namespace") == NAMESPACE, f"{o['_file']}: {meta['name']} namespace"
        assert meta.get("labels", {}).get("app.kubernetes.io/name") == "p2pdist", meta["name"]


_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object", "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": _STRMAP, "annotations": _STRMAP},
    "additionalProperties": False,
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "_file": {"type": "string"},
        "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "interval": _DURATION,
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["alert", "expr", "labels", "annotations"],
                        "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]+$"},
                            "expr": {"type": "string", "minLength": 1},
                            "for": _DURATION,
                            "labels": {"type": "object", "required": ["severity"],
                                       "properties": {"severity": {"enum": ["warning", "critical"]}},
                                       "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "required": ["summary", "description"],
                                            "additionalProperties": {"type": "string"}},
                        },
                    }},
                },
            }}},
        },
    },
    "additionalProperties": False,
}
POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": _META,
        "_file": {"type": "string"},
        "spec": {
            "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"],
                             "properties": {"matchLabels": _STRMAP}, "additionalProperties": False},
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port", "path"], "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"const": "/metrics"},
                        "interval": _DURATION,
                        "relabelings": {"type": "array", "items": {
                            "type": "object", "required": ["targetLabel"], "additionalProperties": False,
                            "properties": {"sourceLabels": {"type": "array", "items": {"type": "string"}},
                                           "targetLabel": {"type": "string"},
                                           "replacement": {"type": "string"}},
                        }},
                    },
                }},
            },
        },
    },
    "additionalProperties": False,
}


def test_prometheus_operator_objects_match_their_schemas():
    crds = [o for o in OBJECTS if o["apiVersion"].startswith(CRD_GROUP)]
    assert {o["kind"] for o in crds} == {"PrometheusRule", "PodMonitor"}
    for o in crds:
        schema = PROMETHEUS_RULE_SCHEMA if o["kind"] == "PrometheusRule" else POD_MONITOR_SCHEMA
        jsonschema.Draft202012Validator(schema).validate(o)


def test_pod_monitors_select_the_workloads_and_their_metrics_port():
    for o in (o for o in OBJECTS if o["kind"] == "PodMonitor"):
        selected = [w for w in WORKLOADS
                    if o["spec"]["selector"]["matchLabels"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, o["metadata"]["name"]
        ports = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        for ep in o["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports


# --- alerts use what the code exports ---------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}
# Series from other exporters the alerts rely on: the scrape itself, cAdvisor, kube-state-metrics.
EXTERNAL_SERIES = {"up", "container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                   "kube_pod_container_resource_limits"}
TARGET_LABELS = {"job", "instance", "node", "namespace", "pod", "container"}


def promql_series(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The metric names in a PromQL expression, each with its equality label matchers."""
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                       # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    found = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, matchers = m.group(1), m.group(2) or ""
        rest = expr[m.end():].lstrip()
        if name.lower() in PROMQL_WORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"[0-9.e]+", name):
            continue
        found.append((name, dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matchers))))
    return found


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the services export, with the label names each carries."""
    out: dict[str, set[str]] = {}
    for m in vars(Metrics("peer")).values():
        name = getattr(m, "_name", None)
        if not isinstance(name, str):
            continue
        labels = set(getattr(m, "_labelnames", ()))
        kind = getattr(m, "_type", "")
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "summary": ["_sum", "_count", "_created"]}.get(kind, [""])
        for s in suffixes:
            out[name + s] = labels | ({"le"} if s == "_bucket" else set())
    return out


def test_promql_series_parser():
    got = promql_series('sum by (node) (rate(p2pdist_chunks_failed_total{job="p", reason="corrupt"}[5m])) > 0')
    assert got == [("p2pdist_chunks_failed_total", {"job": "p", "reason": "corrupt"})]


def test_alert_expressions_use_metrics_the_code_exports():
    exported = exported_metrics()
    assert "p2pdist_back_to_source_total" in exported  # the Metrics introspection works
    rule = find("PrometheusRule", "p2pdist")
    used = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            series = promql_series(r["expr"])
            assert series, f"{r['alert']}: no metric found in {r['expr']!r}"
            for name, matchers in series:
                used.add(name)
                if name in EXTERNAL_SERIES:
                    continue
                assert name in exported, f"{r['alert']}: {name} is not exported by p2pdist.net.observe"
                for label in set(matchers) - TARGET_LABELS:
                    assert label in exported[name], f"{r['alert']}: {name} has no label {label!r}"
    # every label value the alerts match on is one the code sets
    code = "\n".join(p.read_text() for p in (ROOT / "p2pdist").rglob("*.py"))
    assert re.search(r'chunks_failed\.labels\(\s*(reason=)?"corrupt"\s*\)', code)
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"P2pdistPeerDown", "P2pdistBackToSourceRatioHigh", "P2pdistChunkVerificationFailures",
            "P2pdistCPUHigh"} <= alerts
    assert {"p2pdist_back_to_source_total", "p2pdist_chunks_verified_total",
            "p2pdist_chunks_failed_total", "container_cpu_usage_seconds_total"} <= used


def test_alert_thresholds_are_the_documented_ones():
    rules = {r["alert"]: r for g in find("PrometheusRule", "p2pdist")["spec"]["groups"] for r in g["rules"]}
    cpu = rules["P2pdistCPUHigh"]
    assert cpu["for"] == "2m" and re.search(r">\s*0\.85\s*$", cpu["expr"].strip())
    assert 'resource="cpu"' in cpu["expr"]
    assert 'reason="corrupt"' in rules["P2pdistChunkVerificationFailures"]["expr"]
    assert re.search(r">\s*0\s*$", rules["P2pdistChunkVerificationFailures"]["expr"].strip())
    jobs = {o["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"]
            for o in OBJECTS if o["kind"] == "PodMonitor"}
    assert 'job="p2pdist-peer"' in rules["P2pdistPeerDown"]["expr"] and "p2pdist-peer" in jobs


# --- workloads ----------------------------------------------------------------------------

def test_images_are_pinned_by_digest_and_identical():
    images = {c["image"] for w in WORKLOADS
              for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", [])}
    assert len(images) == 1, images
    (image,) = images
    assert DIGEST_IMAGE.match(image), f"{image} is not pinned by digest"
    for w in WORKLOADS:  # the files say the release pipeline replaces the placeholder
        assert "release pipeline" in (K8S / w["_file"]).read_text()


def test_peer_resources_probes_and_rollout():
    spec = pod_spec(PEER)
    peer = container(PEER, "peer")
    assert peer["resources"] == {"requests": {"memory": "64Mi", "cpu": "100m"},
                                 "limits": {"memory": "128Mi", "cpu": "200m"}}
    assert peer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 7401}
    assert peer["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 7401}
    assert PEER["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": "10%"}}
    # the mirror is reachable on the node at 127.0.0.1:7401
    assert spec.get("hostNetwork") is True or any(p.get("hostPort") == 7401 for p in peer["ports"])
    if spec.get("hostNetwork"):
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # else the tracker's DNS name fails
    assert [p["containerPort"] for p in peer["ports"]] == [7401]
    for c in spec["containers"] + spec["initContainers"]:
        assert {"requests", "limits"} <= c["resources"].keys(), c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
    assert peer["securityContext"]["runAsNonRoot"] is True


def test_tracker_deployment_and_headless_service():
    tracker = container(TRACKER, "tracker")
    assert tracker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 7400}
    assert tracker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 7400}
    assert {"requests", "limits"} <= tracker["resources"].keys()
    assert TRACKER["spec"]["replicas"] >= 2
    svc = find("Service", "p2pdist-tracker")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= TRACKER["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [7400]
    port_names = {p["name"]: p["containerPort"] for p in tracker["ports"]}
    assert port_names[svc["spec"]["ports"][0]["targetPort"]] == 7400


def _mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def _volumes(w: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(w)["volumes"]}


def test_peer_store_is_a_hostpath_with_the_config_capacity_as_quota(tmp_path):
    vols = _volumes(PEER)
    peer = container(PEER, "peer")
    store = vols[_mounts(peer)["/var/lib/p2pdist"]]
    assert store["hostPath"] == {"path": "/var/lib/p2pdist", "type": "DirectoryOrCreate"}
    cfg = load_config(PeerConfig, path=_configmap_file(tmp_path))
    assert cfg.data_dir.startswith("/var/lib/p2pdist/")
    assert cfg.capacity is not None and cfg.capacity > 0
    # the store directory is made writable for the non-root peer before it starts
    prep = container(PEER, "prepare-store", init=True)
    assert prep["command"][-1] == cfg.data_dir
    assert str(peer["securityContext"]["runAsUser"]) in prep["command"]


def test_peer_init_container_writes_containerd_hosts_toml():
    init = container(PEER, "configure-containerd", init=True)
    assert init["args"] == ["configure", "containerd", "--mirror", "http://127.0.0.1:7401", "--write",
                            "--hosts-dir", "/host/etc/containerd/certs.d"]
    vol = _volumes(PEER)[_mounts(init)["/host/etc/containerd/certs.d"]]
    assert vol["hostPath"]["path"] == "/etc/containerd/certs.d"
    # `p2pdist configure containerd` is documented where it is used
    assert "p2pdist configure containerd" in (K8S / "peer-daemonset.yaml").read_text()


def test_container_commands_parse_with_the_p2pdist_cli():
    parser = build_parser()
    for w in WORKLOADS:
        for c in pod_spec(w)["containers"]:
            args = parser.parse_args(c["args"])
            assert args.config == "/etc/p2pdist/p2pdist.toml"
            assert _mounts(c)["/etc/p2pdist"] == "config"
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "configure" not in subcommands:
        pytest.skip("`p2pdist configure containerd` is not in the CLI yet")
    parser.parse_args(container(PEER, "configure-containerd", init=True)["args"])


def test_references_resolve():
    """Every ConfigMap, Secret (and key), volume and env var a pod names exists."""
    secrets = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "Secret"}
    configmaps = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "ConfigMap"}
    for w in WORKLOADS:
        vols = _volumes(w)
        for v in vols.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
            if "secret" in v:
                s = secrets[v["secret"]["secretName"]]
                for item in v["secret"].get("items", []):
                    assert item["key"] in s["stringData"]
        for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in vols, f"{c['name']}: volume {m['name']}"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_secrets_are_marked_placeholders():
    secrets = [o for o in OBJECTS if o["kind"] == "Secret"]
    assert {s["type"] for s in secrets} == {"kubernetes.io/dockerconfigjson", "Opaque", "kubernetes.io/tls"}
    for s in secrets:
        assert s["metadata"]["annotations"]["p2pdist.io/placeholder"].startswith("true")
        assert "data" not in s
        for key, value in s["stringData"].items():
            if key == ".dockerconfigjson":
                doc = json.loads(value)
                auth = next(iter(doc["auths"].values()))["auth"]
                assert base64.b64decode(auth).decode().startswith("REPLACE-ME")
            else:
                assert "REPLACE-ME" in value
    assert "PLACEHOLDER" in (K8S / "secret.yaml").read_text()


# --- the ConfigMap's p2pdist.toml ----------------------------------------------------------

def _tls_mount(w: dict[str, Any]) -> str:
    """Where workload ``w``'s main container mounts the component TLS Secret."""
    names = [n for n, v in _volumes(w).items() if v.get("secret", {}).get("secretName") == TLS_SECRET]
    assert len(names) == 1, f"{w['metadata']['name']} does not mount {TLS_SECRET}"
    mounts = [m["mountPath"] for m in pod_spec(w)["containers"][0].get("volumeMounts", []) if m["name"] == names[0]]
    assert len(mounts) == 1
    return mounts[0]


def _configmap_file(tmp: Path) -> str:
    """The ConfigMap's p2pdist.toml as the pods read it, with the component TLS Secret
    mounted where they mount it (a test CA's files stand in for the placeholders)."""
    mount = _tls_mount(PEER)
    assert _tls_mount(TRACKER) == mount
    files = TestCA(tmp / "pki").issue("component")
    tls_dir = tmp / "tls"
    tls_dir.mkdir()
    for key, src in (("tls.crt", files.cert), ("tls.key", files.key), ("ca.crt", files.ca)):
        (tls_dir / key).write_bytes(src.read_bytes())
    assert set(find("Secret", TLS_SECRET)["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
    text = CONFIGMAP["data"]["p2pdist.toml"]
    assert f'"{mount}/' in text
    path = tmp / "p2pdist-configmap.toml"
    path.write_text(text.replace(f'"{mount}/', f'"{tls_dir}/'))
    return str(path)


def _pod_env(c: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would give container ``c`` on a node, $(VAR) expanded."""
    fields = {"status.podIP": "192.0.2.10", "spec.nodeName": "node-1.example"}
    secrets = {o["metadata"]["name"]: o["stringData"] for o in OBJECTS if o["kind"] == "Secret"}
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_configmap_config_loads_for_both_roles(tmp_path):
    path = _configmap_file(tmp_path)
    svc = find("Service", "p2pdist-tracker")
    headless = f"https://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:7400"

    tracker = load_config(TrackerConfig, path=path, env=_pod_env(container(TRACKER, "tracker")))
    assert tracker.listen.endswith(":7400")
    assert tracker.advertise == "192.0.2.10:7400"
    assert tracker.cluster_tls() is not None  # mTLS on, from the mounted Secret

    peer = load_config(PeerConfig, path=path, env=_pod_env(container(PEER, "peer")))
    assert peer.trackers == (headless,)
    assert peer.listen.endswith(":7401")
    assert peer.advertise == "192.0.2.10:7401"
    assert peer.peer_id == "node-1.example"
    assert peer.capacity == 20 * 1024**3
    assert peer.cluster_tls() is not None


def test_standalone_example_config_loads_for_both_roles():
    path = str(STANDALONE / "p2pdist.toml")
    assert load_config(TrackerConfig, path=path).listen.endswith(":7400")
    assert load_config(PeerConfig, path=path).listen.endswith(":7401")


# --- kustomize -----------------------------------------------------------------------------

def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == [p.name for p in manifest_files()]


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.real
def test_kustomize_renders_the_same_objects():
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl (with its built-in kustomize) is installed")
    out = subprocess.run([*cmd, str(K8S)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "KUBECONFIG": os.devnull})
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in OBJECTS)
    for d in rendered:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "p2pdist"
        if d["kind"] in ("Deployment", "DaemonSet", "Secret", "ConfigMap", "Service"):
            kubernetes_validate.validate(d, _k8s_versions()[-1], strict=True)


# --- Ansible -------------------------------------------------------------------------------

def _ansible_env(tmp: Path) -> dict[str, str]:
    home = tmp / "ansible-home"
    home.mkdir(exist_ok=True)
    cfg = home / "ansible.cfg"  # none from the working directory, /etc or ~ applies
    cfg.write_text("[defaults]\n")
    return {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CONFIG": str(cfg), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_ansible_playbook_syntax_check(tmp_path):
    out = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(ANSIBLE / "inventory.example.ini"),
         "--syntax-check", str(ANSIBLE / "playbook.yml")],
        capture_output=True, text=True, timeout=300, env=_ansible_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stderr, out.stderr
    plays = yaml.safe_load((ANSIBLE / "playbook.yml").read_text())
    assert "p2pdist_peers" in [p["hosts"] for p in plays]


def test_ansible_installs_the_standalone_unit():
    tasks = yaml.safe_load((ANSIBLE / "tasks" / "install.yml").read_text())
    srcs = {mod: t[mod]["src"] for t in tasks for mod in ("ansible.builtin.copy", "ansible.builtin.template")
            if mod in t and "src" in t[mod] and "playbook_dir" in t[mod]["src"]}
    assert srcs == {"ansible.builtin.copy": "{{ playbook_dir }}/../standalone/p2pdist-{{ p2pdist_role }}.service",
                    "ansible.builtin.template": "{{ playbook_dir }}/templates/p2pdist.toml.j2"}
    for src in srcs.values():  # the files the playbook ships exist where it looks for them
        for role in ("peer", "tracker"):
            path = src.replace("{{ playbook_dir }}", str(ANSIBLE)).replace("{{ p2pdist_role }}", role)
            assert Path(path).resolve().is_file(), path
    # secrets go through no_log tasks only
    for t in tasks:
        if "cluster_secret" in json.dumps(t) or "registry_auth" in json.dumps(t):
            assert t.get("no_log") is True, t["name"]


@pytest.mark.parametrize("host", ["node-3.example.internal", "tracker-1.example.internal"])
def test_ansible_template_renders_a_config_both_roles_load(tmp_path, host):
    """Ansible itself renders templates/p2pdist.toml.j2 for an inventory host (local connection)."""
    dest = tmp_path / "p2pdist.toml"
    out = subprocess.run(
        [str(VENV_BIN / "ansible"), "-i", str(ANSIBLE / "inventory.example.ini"), host,
         "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
         "-m", "ansible.builtin.template",
         "-a", f"src={ANSIBLE / 'templates' / 'p2pdist.toml.j2'} dest={dest}"],
        capture_output=True, text=True, timeout=300, env=_ansible_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    tomllib.loads(dest.read_text())
    tracker = load_config(TrackerConfig, path=str(dest))
    peer = load_config(PeerConfig, path=str(dest))
    assert peer.trackers == ("http://tracker-1.example.internal:7400",
                             "http://tracker-2.example.internal:7400")
    assert peer.capacity == 20 * 1024**3
    assert peer.peer_id == host
    if host.startswith("node-3"):
        assert peer.zone == "rack-b"
        assert peer.advertise == "node-3.storage.example.internal:7401"
    else:
        assert tracker.advertise == "tracker-1.example.internal:7400"


# --- systemd -------------------------------------------------------------------------------

@pytest.mark.real
@pytest.mark.parametrize("role", ["peer", "tracker"])
def test_systemd_unit_verifies(tmp_path, role):
    """``systemd-analyze verify`` on a copy whose ExecStart is this venv's p2pdist (verify
    checks that the binary exists); any warning about the unit fails the test."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = (STANDALONE / f"p2pdist-{role}.service").read_text()
    assert "ExecStart=/usr/local/bin/p2pdist " in text
    exe = VENV_BIN / "p2pdist"
    assert exe.exists()
    unit = tmp_path / f"p2pdist-{role}.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/p2pdist ", f"ExecStart={exe} "))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
    # the command it runs is one the CLI accepts
    exec_start = re.search(r"^ExecStart=\S+ (.*)$", text, re.M).group(1).split()
    assert build_parser().parse_args(exec_start).config == "/etc/p2pdist/p2pdist.toml"


@pytest.mark.real
def test_systemd_analyze_catches_a_bad_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestrat=always\n")
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=120)
    assert "Restrat" in out.stderr
