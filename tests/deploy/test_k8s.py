"""The Kubernetes packaging (deploy/k8s): every overlay renders with `kubectl kustomize`, every object validates
against the Kubernetes 1.32 schemas, and the rendered stack keeps the invariants an operator relies on (references
resolve, containers are hardened and probed, drains fit the grace period, env vars are real flags, policies and
routes point at real pods, ports and RPCs). The models volume of the GPU overlays: the Job voice-models-pull fills
the claim (Triton's image, `voice-models pull` through the component's script, names and licence acceptance from its
ConfigMap, off by default, the token from an optional Secret, hardened, bounded, HTTPS only), Triton and the
conversion service mount it read-only; each rule is also shown to fail on a mutated render, and the script itself
runs here against a stand-in `voice-models`.

CRDs (Prometheus Operator, Istio, Gateway API) are not in kubernetes-validate's schemas: their objects are checked
here against what they refer to (selectors, ports, gRPC methods from the real descriptors), and the PrometheusRule's
groups through promtool in test_monitoring.py.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
MESH_OVERLAYS = {"istio", "linkerd"}
GPU_OVERLAYS = {"gpu-shared", "gpu-dedicated"}
KUBERNETES_VERSION = "1.32"
KUBECTL = shutil.which("kubectl")
CRD_GROUPS = ("monitoring.coreos.com/", "networking.istio.io/", "gateway.networking.k8s.io/")
WORKLOAD_IMAGES = {"tts-gateway": "gateway", "rvc-service": "rvc", "triton": "triton", "http-edge": "edge"}
# Who may call each upstream's gRPC port: the gateway; the edge too for the conversion service (/rvc).
UPSTREAM_CALLERS = {"triton": {"tts-gateway"}, "rvc-service": {"tts-gateway", "http-edge"}}
# RPCs safe to repeat: reads and probes. Everything else must never be retried by a mesh.
IDEMPOTENT = {
    "voice.v1.TtsGatewayService": {"ListVoices", "GetStatus", "GetVoice"},
    "voice.v1.VoiceConversionService": {"ListModels", "GetStatus"},
    "inference.GRPCInferenceService": {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelConfig",
    },
    "grpc.health.v1.Health": {"Check"},
}

# The models volume (components/voice-models, in the GPU overlays): the claim, the Job that fills it and its settings.
MODELS_CLAIM = "voice-models"
PULL_JOB = "voice-models-pull"
PULL_SETTINGS = "voice-models-pull"  # the ConfigMap (name hashed by kustomize)
PULL_SCRIPT = K8S / "components" / "voice-models" / "voice-models-pull.sh"
HF_TOKEN_SECRET = "voice-models-hf-token"

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")

Manifest = dict[str, Any]


def render(path: Path) -> list[Manifest]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def combined(tmp: Path, base_overlay: str, *components: str) -> Path:
    """An overlay a user would write: one of ours plus components (the mesh and monitoring ones are meant to
    combine with the GPU overlays). Paths are relative: kustomize refuses absolute ones."""
    tmp.mkdir(parents=True, exist_ok=True)
    lines = [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "namespace: voice-serving",
        "resources:",
        f"  - {os.path.relpath(K8S / 'overlays' / base_overlay, tmp)}",
        "components:",
        *(f"  - {os.path.relpath(K8S / 'components' / c, tmp)}" for c in components),
    ]
    (tmp / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    return tmp


RENDERS: dict[str, list[Manifest]] = {}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Manifest]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    if not RENDERS:
        for name in OVERLAYS:
            RENDERS[name] = render(K8S / "overlays" / name)
        tmp = tmp_path_factory.mktemp("combined")
        RENDERS["gpu-shared+istio+monitoring"] = render(combined(tmp / "a", "gpu-shared", "istio", "monitoring"))
        RENDERS["gpu-dedicated+linkerd+monitoring"] = render(
            combined(tmp / "b", "gpu-dedicated", "linkerd", "monitoring")
        )
    return RENDERS


ALL_RENDERS = [*OVERLAYS, "gpu-shared+istio+monitoring", "gpu-dedicated+linkerd+monitoring"]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_specs(docs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """The long-running workloads (they are probed, drained, spread and budgeted)."""
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}:
            yield d, d["spec"]["template"]


def all_pod_specs(docs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """Every pod template: the workloads and the one-shot Jobs."""
    yield from pod_specs(docs)
    for d in docs:
        if d["kind"] == "Job":
            yield d, d["spec"]["template"]


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workload_pods(docs: list[Manifest], selector: dict[str, str]) -> list[Manifest]:
    return [t for _, t in all_pod_specs(docs) if matches(selector, t["metadata"].get("labels", {}))]


def container_ports(template: Manifest) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            ports[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def grpc_methods() -> dict[str, set[str]]:
    """Every method of the services the stack serves, from the compiled descriptors the services use."""
    from grpc_health.v1 import health_pb2
    from tritonclient.grpc import service_pb2

    from voice.v1 import tts_gateway_pb2, voice_conversion_pb2

    out: dict[str, set[str]] = {}
    for module in (tts_gateway_pb2, voice_conversion_pb2, service_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out[service.full_name] = {m.name for m in service.methods}
    return out


def test_every_overlay_directory_is_covered() -> None:
    assert {"cpu", "gpu-shared", "gpu-dedicated", "istio", "linkerd"} <= set(OVERLAYS)
    assert not (K8S / "stack.yaml").exists(), "the single-file manifest was replaced by the kustomize layout"


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_objects_validate_against_the_kubernetes_schema(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    assert len(core) >= 20
    for doc in core:
        # strict: unknown fields (a misspelt key) fail too.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    for doc in docs:
        assert doc["metadata"].get("namespace") == "voice-serving" or doc["kind"] == "Namespace", doc["metadata"]


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_crd_objects_have_their_required_structure(renders: dict[str, list[Manifest]], overlay: str) -> None:
    """A structural check of the custom resources (no CRD schemas offline): apiVersion/kind pairs we target and
    the fields each controller needs."""
    required: dict[tuple[str, str], Callable[[Manifest], bool]] = {
        ("monitoring.coreos.com/v1", "ServiceMonitor"): lambda s: (
            bool(s["selector"]["matchLabels"]) and all("port" in e for e in s["endpoints"])
        ),
        ("monitoring.coreos.com/v1", "PodMonitor"): lambda s: (
            bool(s["selector"]["matchLabels"]) and all("port" in e for e in s["podMetricsEndpoints"])
        ),
        ("monitoring.coreos.com/v1", "PrometheusRule"): lambda s: all(g["name"] and g["rules"] for g in s["groups"]),
        ("networking.istio.io/v1", "DestinationRule"): lambda s: bool(s["host"] and s["trafficPolicy"]),
        ("networking.istio.io/v1", "VirtualService"): lambda s: bool(s["hosts"] and s["http"]),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"): lambda s: bool(s["parentRefs"] and s["rules"]),
    }
    for doc in renders[overlay]:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            check = required.get((doc["apiVersion"], doc["kind"]))
            assert check is not None, f"unexpected custom resource {doc['apiVersion']} {doc['kind']}"
            assert doc["metadata"]["name"] and check(doc["spec"]), doc


def test_yamllint_is_clean_over_deploy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(REPO / "deploy" / ".yamllint.yaml"), "deploy"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_yamllint_config_catches_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [x,y]\n")
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-c", str(REPO / "deploy" / ".yamllint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "key-duplicates" in done.stdout


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_everything_a_pod_references_exists(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    for workload, template in all_pod_specs(docs):
        spec = template["spec"]
        wanted = [("ServiceAccount", spec.get("serviceAccountName", "default"))]
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                wanted.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
                claims.discard(volume["persistentVolumeClaim"]["claimName"])
            if "configMap" in volume:
                wanted.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                wanted.append(("Secret", volume["secret"]["secretName"]))
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    # An optional reference (the Hugging Face token, created by the operator) may be absent.
                    if key in ref and not ref[key].get("optional"):
                        wanted.append((kind, ref[key]["name"]))
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])}
        missing = [w for w in wanted if w not in have]
        assert not missing, f"{workload['metadata']['name']} refers to {missing}"
    assert not claims, f"claims no pod mounts: {claims}"


def gpu_resources(container: Manifest) -> dict[str, Any]:
    resources = container.get("resources", {})
    return {
        k: v
        for part in ("requests", "limits")
        for k, v in resources.get(part, {}).items()
        if k.startswith("nvidia.com/")
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_gpu_requests_follow_the_overlay(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    containers = {w["metadata"]["name"]: t["spec"]["containers"][0] for w, t in pod_specs(docs)}
    assert set(containers) == set(WORKLOAD_IMAGES)
    assert gpu_resources(containers["tts-gateway"]) == {}
    assert gpu_resources(containers["http-edge"]) == {}
    upstreams = ("triton", "rvc-service")
    if overlay.startswith("gpu-shared"):
        expected: dict[str, Any] = {"nvidia.com/gpu.shared": 1}
    elif overlay.startswith("gpu-dedicated"):
        expected = {"nvidia.com/gpu": 1}
    else:
        expected = {}
        assert "nvidia.com" not in yaml.safe_dump_all(docs), "the CPU stack mentions a GPU"
    for name in upstreams:
        c = containers[name]
        assert gpu_resources(c) == expected, name
        for part in ("requests", "limits"):
            for key, value in expected.items():
                assert c["resources"][part][key] == value
        cuda_image = c["image"].endswith("-cuda")
        assert cuda_image == bool(expected), c["image"]
    assert env_of(containers["rvc-service"])["RVC_DEVICE"] == ("cuda" if expected else "cpu")


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_containers_are_hardened_sized_and_probed(renders: dict[str, list[Manifest]], overlay: str) -> None:
    for workload, template in pod_specs(renders[overlay]):
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False
        assert spec.get("topologySpreadConstraints"), workload["metadata"]["name"]
        for c in spec["containers"]:
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert_hardened_and_sized(pod_sc, c, where)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where} lacks {probe}"
            assert c["lifecycle"]["preStop"], where
            # Writable paths are volumes: /tmp everywhere.
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, where


def assert_hardened_and_sized(pod_sc: Manifest, c: Manifest, where: str) -> None:
    sc = {**pod_sc, **c.get("securityContext", {})}
    assert sc.get("runAsNonRoot") is True, where
    assert sc.get("runAsUser") == 65532 and sc.get("runAsGroup") == 65532, where
    assert sc.get("readOnlyRootFilesystem") is True, where
    assert sc.get("allowPrivilegeEscalation") is False, where
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][part]), where


def prestop_seconds(container: Manifest) -> float:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def drain_seconds(container: Manifest) -> float | None:
    """How long the process may drain after SIGTERM, from the setting the container actually passes."""
    env = env_of(container)
    for name in ("GATEWAY_GRACE_SECONDS", "RVC_GRACE_SECONDS", "EDGE_GRACE_SECONDS", "TRITON_STOP_GRACE"):
        if name in env:
            return float(env[name])
    for arg in container.get("args", []):
        if arg.startswith("--exit-timeout-secs="):
            return float(arg.split("=", 1)[1])
    return None


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_termination_grace_covers_prestop_and_drain(renders: dict[str, list[Manifest]], overlay: str) -> None:
    for workload, template in pod_specs(renders[overlay]):
        grace = template["spec"]["terminationGracePeriodSeconds"]
        for c in template["spec"]["containers"]:
            drain = drain_seconds(c)
            assert drain is not None, f"{workload['metadata']['name']}: the drain time is not set explicitly"
            assert grace > prestop_seconds(c) + drain, (workload["metadata"]["name"], grace, drain)


def models_mount(template: Manifest, container: Manifest) -> tuple[Manifest, Manifest]:
    """(the /models mount, its volume) of a container."""
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert len(mounts) == 1, mounts
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mounts[0]["name"])
    return mounts[0], volume


def check_models_volume(docs: list[Manifest], with_claim: bool) -> None:
    """Checkpoints at /models, read-only, where the launcher looks (TRITON_MODELS_DIR): the claim voice-models where
    components/voice-models is in (the GPU overlays), an empty placeholder otherwise (Piper needs no checkpoint).
    The conversion service reads its RVC assets from the same claim's rvc/, read-only, on Triton's node (a
    ReadWriteOnce claim attaches to one node); only the pull Job mounts the claim writable."""
    triton = named(docs, "Deployment", "triton")["spec"]["template"]
    container = triton["spec"]["containers"][0]
    assert env_of(container)["TRITON_MODELS_DIR"] == "/models"
    mount, volume = models_mount(triton, container)
    assert mount["readOnly"] is True, mount
    claims = [d for d in of_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == MODELS_CLAIM]
    rvc = named(docs, "Deployment", "rvc-service")["spec"]["template"]
    rvc_container = rvc["spec"]["containers"][0]
    rvc_mount, rvc_volume = models_mount(rvc, rvc_container)
    assert rvc_mount["readOnly"] is True, rvc_mount
    if with_claim:
        assert set(volume) == {"name", "persistentVolumeClaim"}, volume
        assert volume["persistentVolumeClaim"] == {"claimName": MODELS_CLAIM, "readOnly": True}
        assert len(claims) == 1
        claim = claims[0]["spec"]
        assert claim["accessModes"] and claim["resources"]["requests"]["storage"]
        # The conversion service: the same claim, read-only, its folder rvc/ (where `voice-models pull rvc-base`
        # writes), on Triton's node.
        assert rvc_volume == {"name": rvc_mount["name"], "persistentVolumeClaim": volume["persistentVolumeClaim"]}
        assert "subPath" not in rvc_mount and env_of(rvc_container)["RVC_MODELS_DIR"] == "/models/rvc"
        assert not [d for d in of_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == "rvc-models"]
        assert_on_the_node_of(rvc["spec"], triton["metadata"]["labels"], "rvc-service")
    else:
        assert set(volume) == {"name", "emptyDir"}, volume
        assert not claims
        assert rvc_volume["persistentVolumeClaim"]["claimName"] == "rvc-models"
        assert env_of(rvc_container)["RVC_MODELS_DIR"] == "/models"
    # Who mounts the claim: Triton and the conversion service read-only, the pull Job writable, nobody else.
    writers, readers = set(), set()
    for workload, template in all_pod_specs(docs):
        for v in template["spec"].get("volumes", []):
            if v.get("persistentVolumeClaim", {}).get("claimName") != MODELS_CLAIM:
                continue
            name = workload["metadata"]["name"]
            mounts = [
                m for c in template["spec"]["containers"] for m in c.get("volumeMounts", []) if m["name"] == v["name"]
            ]
            if v["persistentVolumeClaim"].get("readOnly") or all(m.get("readOnly") for m in mounts):
                assert v["persistentVolumeClaim"].get("readOnly") is True and all(m.get("readOnly") for m in mounts)
                readers.add((workload["kind"], name))
            else:
                writers.add((workload["kind"], name))
    if with_claim:
        assert readers == {("Deployment", "triton"), ("Deployment", "rvc-service")}, readers
        assert writers == {("Job", PULL_JOB)}, writers
    else:
        assert not readers and not writers


def assert_on_the_node_of(pod: Manifest, labels: dict[str, str], where: str) -> None:
    terms = pod.get("affinity", {}).get("podAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname" and matches(t["labelSelector"]["matchLabels"], labels)
        for t in terms
    ), f"{where} is not bound to Triton's node (the claim is ReadWriteOnce)"


def pull_settings(docs: list[Manifest], container: Manifest) -> dict[str, str]:
    """The Job's settings as its pod sees them: each variable from the ConfigMap its reference names."""
    out = {}
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            config = named(docs, "ConfigMap", ref["name"])
            assert config["metadata"]["name"].startswith(PULL_SETTINGS + "-"), "settings from a hashed ConfigMap"
            out[env["name"]] = config["data"][ref["key"]]
    return out


def check_pull_job(docs: list[Manifest]) -> None:
    """The Job that fills the claim: `voice-models pull` in Triton's image, through the script of
    components/voice-models; names and licence acceptance (off) from its ConfigMap, the token from the optional
    Secret voice-models-hf-token; writes the claim at /models; hardened and sized like the workloads; bounded
    (deadline, retries, cleaned up after); on Triton's node; HTTPS out, nothing in; no mesh proxy."""
    job = named(docs, "Job", PULL_JOB)
    spec = job["spec"]
    assert 0 < spec["backoffLimit"] <= 6
    assert spec.get("ttlSecondsAfterFinished", 0) > 0 and spec.get("activeDeadlineSeconds", 0) > 0
    template = spec["template"]
    pod = template["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    assert pod["automountServiceAccountToken"] is False
    assert named(docs, "ServiceAccount", pod["serviceAccountName"])["automountServiceAccountToken"] is False
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert template["metadata"]["annotations"]["linkerd.io/inject"] == "disabled"
    (container,) = pod["containers"]
    assert_hardened_and_sized(pod.get("securityContext", {}), container, PULL_JOB)
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    triton = named(docs, "Deployment", "triton")["spec"]["template"]
    assert container["image"] == triton["spec"]["containers"][0]["image"], "the pull runs Triton's image"
    # The command: the script from the ConfigMap, which execs `voice-models pull`.
    command = container["command"]
    assert command[0] == "/bin/sh" and len(command) == 2 and not container.get("args"), command
    assert "--accept-license" not in json.dumps(container)
    folder, _, filename = command[1].rpartition("/")
    (script_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    script_volume = next(v for v in pod["volumes"] if v["name"] == script_mount["name"])
    (item,) = [i for i in script_volume["configMap"]["items"] if i["path"] == filename]
    script = named(docs, "ConfigMap", script_volume["configMap"]["name"])["data"][item["key"]]
    assert script == PULL_SCRIPT.read_text(encoding="utf-8")
    assert "exec voice-models pull " in script
    # Settings: the names, and licences not accepted unless the operator says so.
    settings = pull_settings(docs, container)
    assert settings["VOICE_MODELS"].split() == ["spark-tts-0.5b", "rvc-base"]
    assert settings["VOICE_MODELS_ACCEPT_LICENSE"] == "0", "licence acceptance must be the operator's choice"
    env = {e["name"]: e for e in container["env"]}
    assert env["VOICE_MODELS_DIR"]["value"] == "/models"
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": "HF_TOKEN", "optional": True}},
    }
    assert not [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == HF_TOKEN_SECRET], "no token in git"
    # It writes the claim.
    mount, volume = models_mount(template, container)
    assert not mount.get("readOnly") and volume["persistentVolumeClaim"] == {"claimName": MODELS_CLAIM}
    assert_on_the_node_of(pod, triton["metadata"]["labels"], PULL_JOB)
    # Network: out to HTTPS (the Hub), DNS; nothing in.
    labels = template["metadata"]["labels"]
    egress = policy_rules_for(docs, labels, "egress")
    assert any(443 in port_numbers(r) for r in egress)
    assert {p["protocol"] for r in egress if 53 in port_numbers(r) for p in r["ports"]} == {"UDP", "TCP"}
    # Nothing in: no policy of its own opens a port (namespace-wide ones, like a mesh's, select every pod).
    own = [
        policy
        for policy in of_kind(docs, "NetworkPolicy")
        if policy["spec"]["podSelector"].get("matchLabels")
        and matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    ]
    assert own and all("Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress") for p in own)


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_models_volume_is_filled_by_the_pull_job_and_read_only_elsewhere(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    docs = renders[overlay]
    with_claim = overlay.startswith("gpu-")
    check_models_volume(docs, with_claim)
    if with_claim:
        check_pull_job(docs)
    else:
        assert not of_kind(docs, "Job")


def _container(docs: list[Manifest], kind: str, name: str) -> Manifest:
    container: Manifest = named(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return container


def _pull_settings_map(docs: list[Manifest]) -> Manifest:
    (config,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(PULL_SETTINGS + "-")]
    return config


def _mount(docs: list[Manifest], kind: str, name: str, path: str) -> Manifest:
    return next(m for m in _container(docs, kind, name)["volumeMounts"] if m["mountPath"] == path)


def _set_env(container: Manifest, name: str, value: str) -> None:
    container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, "value": value}]


MUTATIONS: dict[str, Callable[[list[Manifest]], None]] = {
    "licence-accepted": lambda d: _pull_settings_map(d)["data"].update(VOICE_MODELS_ACCEPT_LICENSE="1"),
    "licence-flag": lambda d: _container(d, "Job", PULL_JOB)["command"].append("--accept-license"),
    "root": lambda d: _container(d, "Job", PULL_JOB)["securityContext"].update(runAsUser=0, runAsNonRoot=False),
    "writable-root-fs": lambda d: _container(d, "Job", PULL_JOB)["securityContext"].update(
        readOnlyRootFilesystem=False
    ),
    "token-in-plain": lambda d: _set_env(_container(d, "Job", PULL_JOB), "HF_TOKEN", "hf_xxx"),
    "job-reads-only": lambda d: _mount(d, "Job", PULL_JOB, "/models").update(readOnly=True),
    "other-image": lambda d: _container(d, "Job", PULL_JOB).update(image="busybox"),
    "no-ttl": lambda d: named(d, "Job", PULL_JOB)["spec"].pop("ttlSecondsAfterFinished"),
    "anywhere": lambda d: named(d, "Job", PULL_JOB)["spec"]["template"]["spec"].pop("affinity"),
    "triton-writes": lambda d: _mount(d, "Deployment", "triton", "/models").update(readOnly=False),
    "rvc-writes": lambda d: _mount(d, "Deployment", "rvc-service", "/models").update(readOnly=False),
    "rvc-elsewhere": lambda d: _set_env(_container(d, "Deployment", "rvc-service"), "RVC_MODELS_DIR", "/models"),
}


@needs_kubectl
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_models_volume_checks_catch_a_broken_manifest(renders: dict[str, list[Manifest]], mutation: str) -> None:
    docs = copy.deepcopy(renders["gpu-shared"])
    MUTATIONS[mutation](docs)
    with pytest.raises(AssertionError):
        check_models_volume(docs, with_claim=True)
        check_pull_job(docs)


@needs_kubectl
def test_an_overlay_accepts_the_licences_explicitly(tmp_path: Path) -> None:
    """The documented way to accept: a merge into the ConfigMap in the operator's own overlay; the Job follows the
    new (hashed) name, and everything else of the check still holds."""
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "\n".join(
            [
                "apiVersion: kustomize.config.k8s.io/v1beta1",
                "kind: Kustomization",
                "namespace: voice-serving",
                "resources:",
                f"  - {os.path.relpath(K8S / 'overlays' / 'gpu-dedicated', overlay)}",
                "configMapGenerator:",
                f"  - name: {PULL_SETTINGS}",
                "    behavior: merge",
                "    literals:",
                "      - VOICE_MODELS=spark-tts-0.5b orpheus-3b-0.1-ft rvc-base",
                "      - VOICE_MODELS_ACCEPT_LICENSE=1",
            ]
        )
        + "\n"
    )
    docs = render(overlay)
    settings = pull_settings(docs, _container(docs, "Job", PULL_JOB))
    assert settings == {"VOICE_MODELS": "spark-tts-0.5b orpheus-3b-0.1-ft rvc-base", "VOICE_MODELS_ACCEPT_LICENSE": "1"}
    check_models_volume(docs, with_claim=True)


def run_pull_script(
    tmp_path: Path, *args: str, env: dict[str, str], exit_status: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[str] | None, str | None]:
    """The script with a stand-in `voice-models` first on PATH: (the run, the arguments it got or None if it was
    not run, the HF_TOKEN it saw)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    record.unlink(missing_ok=True)
    fake = bin_dir / "voice-models"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'token': os.environ.get('HF_TOKEN')}}, open({str(record)!r}, 'w'))\n"
        f"sys.exit({exit_status})\n"
    )
    fake.chmod(0o755)
    # Files a glob of `*` would match, in the folder the script runs in.
    (tmp_path / "glob-bait").write_text("")
    done = subprocess.run(
        ["/bin/sh", str(PULL_SCRIPT), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if not record.exists():
        return done, None, None
    seen = json.loads(record.read_text())
    return done, seen["argv"], seen["token"]


def test_pull_script_turns_the_settings_into_arguments(tmp_path: Path) -> None:
    """The script both jobs run (the Kubernetes Job from its ConfigMap, compose's models-pull by a bind mount)."""
    names = {"VOICE_MODELS": "spark-tts-0.5b  rvc-base", "VOICE_MODELS_TOKEN_FILE": "/dev/null"}
    # Unset and 0: no licence accepted.
    for accept in ({}, {"VOICE_MODELS_ACCEPT_LICENSE": "0"}):
        done, argv, token = run_pull_script(tmp_path, env={**names, **accept})
        assert done.returncode == 0, done.stderr
        assert argv == ["pull", "spark-tts-0.5b", "rvc-base"] and token is None
        assert "licences not accepted" in done.stderr
    # Exactly 1 accepts; anything else is refused before voice-models runs.
    done, argv, _ = run_pull_script(tmp_path, env={**names, "VOICE_MODELS_ACCEPT_LICENSE": "1"})
    assert done.returncode == 0 and argv == ["pull", "spark-tts-0.5b", "rvc-base", "--accept-license"]
    for value in ("yes", "true", " 1", "10"):
        done, argv, _ = run_pull_script(tmp_path, env={**names, "VOICE_MODELS_ACCEPT_LICENSE": value})
        assert done.returncode == 2 and argv is None, value
        assert "must be 0 or 1" in done.stderr
    # Arguments replace VOICE_MODELS; names are never globbed; no names at all is an error.
    done, argv, _ = run_pull_script(tmp_path, "orpheus-3b-0.1-ft", env=names)
    assert argv == ["pull", "orpheus-3b-0.1-ft"]
    done, argv, _ = run_pull_script(tmp_path, env={"VOICE_MODELS": "*"})
    assert argv == ["pull", "*"]
    done, argv, _ = run_pull_script(tmp_path, env={"VOICE_MODELS": " "})
    assert done.returncode == 2 and argv is None and "no model named" in done.stderr
    # The token: the environment's, replaced by a non-empty secret file; never printed.
    done, argv, token = run_pull_script(tmp_path, env={**names, "HF_TOKEN": "hf_env"})
    assert token == "hf_env"
    secret = tmp_path / "hf_token"
    secret.write_text("hf_file\n")
    done, argv, token = run_pull_script(
        tmp_path, env={**names, "HF_TOKEN": "hf_env", "VOICE_MODELS_TOKEN_FILE": str(secret)}
    )
    assert token == "hf_file" and "hf_file" not in done.stdout + done.stderr
    # voice-models' own exit status is the job's (exec).
    done, argv, _ = run_pull_script(tmp_path, env=names, exit_status=3)
    assert done.returncode == 3 and argv is not None


def load_triton_launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("voice_triton_launch", REPO / "triton" / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def launcher_env_names(launcher: ModuleType) -> set[str]:
    """The TRITON_* variables the launcher reads, from its own --help (each option names its variable)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        m.setenv("COLUMNS", "400")
        launcher.parse_args(["--help"])
    names = set(re.findall(r"\[env\s+(TRITON_\w+)\]", out.getvalue()))
    assert {"TRITON_MODELS_DIR", "TRITON_STOP_GRACE", "TRITON_INSTANCE_COUNT"} <= names, names
    return names


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_env_vars_are_real_options_with_valid_values(
    renders: dict[str, list[Manifest]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's parser is built with the container's environment: an unknown GATEWAY_*/RVC_*/TRITON_* name
    fails, and so does a value the option's type or choices refuse (the parser exits)."""
    from services.rvc_service.__main__ import make_parser as rvc_parser
    from services.tts_gateway.app import make_parser as gateway_parser

    launcher = load_triton_launcher()
    triton_env = launcher_env_names(launcher)
    for workload, template in pod_specs(renders[overlay]):
        name = workload["metadata"]["name"]
        for c in template["spec"]["containers"]:
            env = env_of(c)
            with monkeypatch.context() as m:
                for key, value in env.items():
                    m.setenv(key, value)
                if name == "tts-gateway":
                    parser = gateway_parser()
                    assert {k for k in env if k.startswith("GATEWAY_")} <= set(parser.env_names.values())
                    args = parser.parse_args([])
                    assert str(args.voices) == env["GATEWAY_VOICES"]
                elif name == "rvc-service":
                    parser = rvc_parser()
                    assert {k for k in env if k.startswith("RVC_")} <= set(parser.env_names.values())
                    parser.parse_args([])
                else:
                    assert {k for k in env if k.startswith("TRITON_")} <= triton_env
                    launcher.parse_args([])  # both Triton images run the launcher
            prefixes = {"tts-gateway": "GATEWAY_", "rvc-service": "RVC_", "triton": "TRITON_"}
            foreign = [k for k in env if k.split("_")[0] + "_" in {"GATEWAY_", "RVC_", "TRITON_"}]
            assert all(k.startswith(prefixes[name]) for k in foreign), (name, foreign)


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_gateway_targets_resolve_to_services_with_the_right_balancing(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    docs = renders[overlay]
    env = env_of(named(docs, "Deployment", "tts-gateway")["spec"]["template"]["spec"]["containers"][0])
    meshed = any(part in MESH_OVERLAYS for part in re.split(r"[+]", overlay))
    for key in ("GATEWAY_TRITON_URL", "GATEWAY_RVC_URL"):
        target = env[key]
        if meshed:
            # The mesh balances per request over a ClusterIP Service.
            assert not target.startswith("dns:///"), target
            host, port = target.split(":")
            service = named(docs, "Service", host)
            assert service["spec"].get("clusterIP") != "None"
        else:
            # Client-side round robin over every pod address of a headless Service.
            assert target.startswith("dns:///"), target
            host, port = target.removeprefix("dns:///").split(":")
            service = named(docs, "Service", host)
            assert service["spec"]["clusterIP"] == "None"
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        assert workload_pods(docs, service["spec"]["selector"]), f"{host} selects no pods"


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_services_and_probes_point_at_real_ports(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    methods = grpc_methods()
    for service in of_kind(docs, "Service"):
        pods = workload_pods(docs, service["spec"]["selector"])
        assert pods, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert all(port["targetPort"] in container_ports(t) for t in pods), (service["metadata"]["name"], port)
            if port["name"] == "grpc":
                assert port["appProtocol"] == "grpc"
    for workload, template in pod_specs(docs):
        ports = container_ports(template)
        for c in template["spec"]["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c[kind]
                action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
                assert action is not None and action["port"] in ports, (workload["metadata"]["name"], kind)
                if "grpc" in probe and probe["grpc"].get("service"):
                    assert probe["grpc"]["service"] in methods, probe
                if "httpGet" in probe:  # Triton's health routes, or the edge's (503 while the gateway is down)
                    assert probe["httpGet"]["path"].startswith("/v2/health/") or (
                        workload["metadata"]["name"] == "http-edge" and probe["httpGet"]["path"] == "/health"
                    )
        # Readiness of our gRPC services asks for the service itself (it follows the upstreams).
        readiness = template["spec"]["containers"][0]["readinessProbe"]
        if "grpc" in readiness:
            assert readiness["grpc"]["service"].startswith("voice.v1.")


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_pod_disruption_budgets_cover_every_workload(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    budgets = of_kind(docs, "PodDisruptionBudget")
    for workload, template in pod_specs(docs):
        covering = [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])]
        assert len(covering) == 1, workload["metadata"]["name"]
        if workload["spec"]["replicas"] > 1 and "minAvailable" in covering[0]["spec"]:
            assert covering[0]["spec"]["minAvailable"] < workload["spec"]["replicas"], "a budget that blocks drains"


def policy_rules_for(docs: list[Manifest], labels: dict[str, str], direction: str) -> list[Manifest]:
    rules = []
    for policy in of_kind(docs, "NetworkPolicy"):
        if matches(policy["spec"]["podSelector"].get("matchLabels", {}), labels):
            rules.extend(policy["spec"].get(direction, []))
    return rules


def port_numbers(rule: Manifest) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_network_policies_allow_only_the_intended_paths(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    templates = {w["metadata"]["name"]: t for w, t in pod_specs(docs)}
    labels = {name: t["metadata"]["labels"] for name, t in templates.items()}
    # Every selector in every policy selects pods of this stack (or all of them).
    for policy in of_kind(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert not selector or workload_pods(docs, selector), policy["metadata"]["name"]
        assert set(policy["spec"]["policyTypes"]) >= {"Ingress"} or "egress" in policy["spec"]
        for direction, peer in (("ingress", "from"), ("egress", "to")):
            for rule in policy["spec"].get(direction, []):
                for p in rule.get(peer, []):
                    if "podSelector" in p and "namespaceSelector" not in p:
                        assert workload_pods(docs, p["podSelector"]["matchLabels"]), p
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in of_kind(docs, "NetworkPolicy")
    ), "no default deny"
    gateway_ports = container_ports(templates["tts-gateway"])
    for upstream, grpc_port in (("triton", 8001), ("rvc-service", 50052)):
        assert grpc_port in container_ports(templates[upstream]).values()
        opening = [r for r in policy_rules_for(docs, labels[upstream], "ingress") if grpc_port in port_numbers(r)]
        assert opening, f"{upstream} accepts no gRPC at all"
        for rule in opening:
            peers = rule.get("from", [])
            assert peers, f"{upstream} gRPC is open to everyone"
            for peer in peers:
                assert "namespaceSelector" not in peer
                callers = [
                    c for c in UPSTREAM_CALLERS[upstream] if matches(peer["podSelector"]["matchLabels"], labels[c])
                ]
                assert callers, f"{upstream} gRPC is open to {peer}"
                assert not matches(peer["podSelector"]["matchLabels"], labels[upstream])
        egress = policy_rules_for(docs, labels["tts-gateway"], "egress")
        assert any(
            grpc_port in port_numbers(r)
            and any(matches(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), labels[upstream]) for p in r["to"])
            for r in egress
        ), f"the gateway may not reach {upstream}"
    public = [r for r in policy_rules_for(docs, labels["tts-gateway"], "ingress") if 50051 in port_numbers(r)]
    assert any(not r.get("from") for r in public) and gateway_ports["grpc"] == 50051
    for name, template in templates.items():
        metrics_port = container_ports(template)["metrics"]
        rules = [r for r in policy_rules_for(docs, labels[name], "ingress") if metrics_port in port_numbers(r)]
        assert rules and all(
            p.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"}
            for r in rules
            for p in r["from"]
        ), name
        dns = [r for r in policy_rules_for(docs, labels[name], "egress") if 53 in port_numbers(r)]
        assert {p["protocol"] for r in dns for p in r["ports"]} == {"UDP", "TCP"}, name


def test_voices_configmap_source_is_the_packaged_default() -> None:
    """kustomize cannot read files outside the kustomization, so base/ carries a copy; it must not drift."""
    assert (K8S / "base" / "voices.toml").read_bytes() == (
        REPO / "services" / "tts_gateway" / "voices.toml"
    ).read_bytes()


@needs_kubectl
def test_editing_the_voices_file_rolls_the_gateway(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    before = render(copy / "overlays" / "cpu")
    with (copy / "base" / "voices.toml").open("a") as f:
        f.write('\n[[voice]]\nname = "added"\ntts_model = "piper_tts"\n')
    after = render(copy / "overlays" / "cpu")

    def voices_configmap(docs: list[Manifest]) -> tuple[str, str]:
        maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("gateway-voices-")]
        assert len(maps) == 1
        volume = next(
            v
            for v in named(docs, "Deployment", "tts-gateway")["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        )
        assert volume["configMap"]["name"] == maps[0]["metadata"]["name"]
        return maps[0]["metadata"]["name"], maps[0]["data"]["voices.toml"]

    name_before, data_before = voices_configmap(before)
    name_after, data_after = voices_configmap(after)
    assert name_before != name_after, "a new voices file must produce a new ConfigMap name (and a rollout)"
    assert 'name = "added"' in data_after and 'name = "added"' not in data_before


@needs_kubectl
def test_voices_in_the_configmap_parse_with_the_gateway_loader(
    renders: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    import tomllib

    cm = next(d for d in of_kind(renders["cpu"], "ConfigMap") if d["metadata"]["name"].startswith("gateway-voices"))
    voices = tomllib.loads(cm["data"]["voices.toml"])["voice"]
    assert len(voices) >= 1 and all(v["name"] and v["tts_model"] for v in voices)


def retry_paths_istio(vs: Manifest) -> tuple[set[str], list[Manifest]]:
    retried: set[str] = set()
    unretried_routes = []
    for route in vs["spec"]["http"]:
        retries = route.get("retries", {})
        if retries.get("attempts", 0) > 0:
            assert retries["retryOn"] == "unavailable", route
            assert route.get("match"), "a retrying route must name its methods"
            retried |= {m["uri"]["exact"] for m in route["match"]}
        else:
            unretried_routes.append(route)
    return retried, unretried_routes


@needs_kubectl
@pytest.mark.parametrize("overlay", [o for o in ALL_RENDERS if "istio" in o])
def test_istio_retries_only_idempotent_rpcs(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    methods = grpc_methods()
    for template in (t for _, t in pod_specs(docs)):
        assert template["metadata"]["labels"].get("sidecar.istio.io/inject") == "true"
    services = {s["metadata"]["name"] for s in of_kind(docs, "Service")}
    virtual = of_kind(docs, "VirtualService")
    assert {v["metadata"]["name"] for v in virtual} == {"tts-gateway", "rvc-service", "triton"}
    for vs in virtual:
        assert set(vs["spec"]["hosts"]) <= services
        retried, rest = retry_paths_istio(vs)
        assert retried
        for path in retried:
            service, method = path.strip("/").split("/")
            assert method in methods[service], f"{path} is not a real RPC"
            assert method in IDEMPOTENT[service], f"{path} is retried but not idempotent"
        # The fallback route exists, matches everything and explicitly turns Istio's default retries off.
        assert rest and not rest[-1].get("match") and rest[-1]["retries"]["attempts"] == 0
        for route in vs["spec"]["http"]:
            for dest in route["route"]:
                host = dest["destination"]["host"]
                assert host in services
                assert dest["destination"]["port"]["number"] in {
                    p["port"] for p in named(docs, "Service", host)["spec"]["ports"]
                }
    for dr in of_kind(docs, "DestinationRule"):
        assert dr["spec"]["host"] in services
        policy = dr["spec"]["trafficPolicy"]
        assert policy["connectionPool"]["http"]["http2MaxRequests"] > 0
        assert policy["connectionPool"]["http"]["maxRequestsPerConnection"] == 0
        assert policy["outlierDetection"]["consecutiveGatewayErrors"] > 0


@needs_kubectl
@pytest.mark.parametrize("overlay", [o for o in ALL_RENDERS if "linkerd" in o])
def test_linkerd_retries_only_idempotent_rpcs(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    methods = grpc_methods()
    for template in (t for _, t in pod_specs(docs)):
        assert template["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    routes = of_kind(docs, "GRPCRoute")
    parents: dict[str, list[Manifest]] = {}
    for route in routes:
        for parent in route["spec"]["parentRefs"]:
            service = named(docs, "Service", parent["name"])
            assert parent["kind"] == "Service" and parent["port"] in {p["port"] for p in service["spec"]["ports"]}
            parents.setdefault(parent["name"], []).append(route)
    assert set(parents) == {"tts-gateway", "rvc-service", "triton"}
    for service_name, attached in parents.items():
        retrying = [r for r in attached if "retry.linkerd.io/grpc" in r["metadata"].get("annotations", {})]
        plain = [r for r in attached if r not in retrying]
        assert len(retrying) == 1 and retrying[0]["metadata"]["annotations"]["retry.linkerd.io/grpc"] == "unavailable"
        for rule in retrying[0]["spec"]["rules"]:
            assert rule["matches"], "a retrying route must name its methods"
            for match in rule["matches"]:
                service, method = match["method"]["service"], match["method"]["method"]
                assert method in methods[service] and method in IDEMPOTENT[service], (service, method)
        # A catch-all without retries keeps every other RPC routed once Linkerd sees routes on the Service.
        assert any(all(not rule.get("matches") for rule in r["spec"]["rules"]) for r in plain), service_name


@needs_kubectl
@pytest.mark.parametrize("overlay", [o for o in ALL_RENDERS if "monitoring" in o])
def test_monitors_select_real_ports(renders: dict[str, list[Manifest]], overlay: str) -> None:
    docs = renders[overlay]
    for monitor in of_kind(docs, "ServiceMonitor"):
        services = [
            s
            for s in of_kind(docs, "Service")
            if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        assert services, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            # Headless Services share the labels but carry no metrics port: they yield no targets.
            assert any(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
    for monitor in of_kind(docs, "PodMonitor"):
        pods = workload_pods(docs, monitor["spec"]["selector"]["matchLabels"])
        assert pods
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert all(endpoint["port"] in container_ports(t) for t in pods)
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        workload = named(docs, target["kind"], target["name"])
        assert hpa["spec"]["minReplicas"] <= workload["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
        assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])


# ---- saved voices: the base reads its database URL from a Secret; components/saved-voices-postgres brings one


def gateway_container(docs: list[Manifest]) -> Manifest:
    return named(docs, "Deployment", "tts-gateway")["spec"]["template"]["spec"]["containers"][0]


@needs_kubectl
@pytest.mark.parametrize("overlay", ALL_RENDERS)
def test_the_gateway_takes_its_saved_voices_database_from_a_secret(
    renders: dict[str, list[Manifest]], overlay: str
) -> None:
    env = {e["name"]: e for e in gateway_container(renders[overlay])["env"]}
    ref = env["GATEWAY_SAVED_VOICES_DATABASE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tts-gateway-saved-voices", "key": "database-url", "optional": True}
    # No per-replica directory: without the database, CreateVoice is off rather than split between replicas.
    assert env["GATEWAY_SAVED_VOICES_DIR"]["value"] == ""
    assert not [d for d in of_kind(renders[overlay], "Secret") if "saved-voices" in d["metadata"]["name"]]


@needs_kubectl
def test_in_cluster_postgres_component_is_valid_hardened_and_reachable_only_by_the_gateway(tmp_path: Path) -> None:
    docs = render(combined(tmp_path / "pg", "cpu", "saved-voices-postgres"))
    for doc in docs:
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"].get("namespace") == "voice-serving" or doc["kind"] == "Namespace"
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    database = named(docs, "StatefulSet", "saved-voices-postgres")
    spec = database["spec"]["template"]["spec"]
    assert ("ServiceAccount", spec["serviceAccountName"]) in have and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sc = {**spec["securityContext"], **container["securityContext"]}
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container
    assert {"/var/lib/postgresql/data", "/tmp"} <= {m["mountPath"] for m in container["volumeMounts"]}
    assert database["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    for env in container["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            assert ("Secret", ref["name"]) in have
    # The gateway's Secret points at the Service, which selects the database's pods on its port.
    url_secret = named(docs, "Secret", "tts-gateway-saved-voices")
    url = (
        url_secret.get("stringData", {}).get("database-url")
        or __import__("base64").b64decode(url_secret["data"]["database-url"]).decode()
    )
    service = named(docs, "Service", "saved-voices-postgres")
    assert url.startswith("postgresql://") and "@saved-voices-postgres:5432/" in url
    assert matches(service["spec"]["selector"], database["spec"]["template"]["metadata"]["labels"])
    assert container_ports(database["spec"]["template"])["postgres"] == 5432
    # NetworkPolicy: only gateway pods may open 5432 on the database; the gateway may reach it.
    db_labels = database["spec"]["template"]["metadata"]["labels"]
    gateway_labels = named(docs, "Deployment", "tts-gateway")["spec"]["template"]["metadata"]["labels"]
    ingress = policy_rules_for(docs, db_labels, "ingress")
    assert ingress and all(5432 in port_numbers(r) for r in ingress)
    for rule in ingress:
        assert rule["from"], "the database is open to everyone"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"} and matches(peer["podSelector"]["matchLabels"], gateway_labels)
            for other in ("triton", "rvc-service", "http-edge"):
                labels = named(docs, "Deployment", other)["spec"]["template"]["metadata"]["labels"]
                assert not matches(peer["podSelector"]["matchLabels"], labels), other
    assert any(
        5432 in port_numbers(r)
        and any(matches(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), db_labels) for p in r["to"])
        for r in policy_rules_for(docs, gateway_labels, "egress")
    )
    assert not policy_rules_for(docs, db_labels, "egress") or all(
        53 in port_numbers(r) for r in policy_rules_for(docs, db_labels, "egress")
    )
