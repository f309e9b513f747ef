"""deploy/k8s: the rendered overlays are what kustomize makes of the sources, valid Kubernetes
(kubernetes-validate, strict, against the core schemas), secure by checkov's defaults (non-root,
read-only root filesystem, no privilege escalation, ...), and consistent with the services (probes on
the metrics ports, settings that exist, KEDA triggers on the real streams and groups).

KEDA's CRDs are not in the core schemas and no registry package here carries them: the ScaledObjects
and TriggerAuthentications are validated against pydantic models of the fields KEDA documents for
them and for its `redis-streams` trigger (strict: an unknown or misspelt field fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.metrics import DEFAULT_PORTS
from shared.settings import unknown_env_names
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, Keys

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.30.0"
STREAM_SERVICES = ("capture", "detector", "classifier", "recorder")
# checkov checks that do not apply, with the reason (the rest must pass):
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images by digest: the digest is only known once you push your build; pin it in the "
                  "kustomization's images: when you do",
    "CKV_K8S_35": "secrets as files: the services read their settings from environment variables "
                  "(shared/settings.py), so secrets come in with envFrom from the Secret",
}


def rendered(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / "rendered" / f"{overlay}.yaml").read_text()) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def checkov_binary() -> str:
    candidates = [os.environ.get("CHECKOV"), REPO_ROOT / ".venv-checkov" / "bin" / "checkov",
                  Path(sys.prefix).parent / ".venv-checkov" / "bin" / "checkov", shutil.which("checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("checkov not found: `make test` installs it into .venv-checkov (the [checkov] extra)")


# --- rendering -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_is_what_kustomize_makes(overlay):
    """deploy/k8s/render.sh was re-run after every change of the sources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: the rendered files are validated "
                    "below, but their freshness cannot be checked here")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all(result.stdout)) == rendered(overlay), \
        f"deploy/k8s/rendered/{overlay}.yaml is stale: run deploy/k8s/render.sh"


# --- schemas -------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ScaleTargetRef(_Strict):
    name: str
    apiVersion: str | None = None
    kind: str | None = None


class AuthenticationRef(_Strict):
    name: str
    kind: Literal["TriggerAuthentication", "ClusterTriggerAuthentication"] | None = None


REDIS_STREAMS_METADATA = {"address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
                          "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
                          "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex"}


class Trigger(_Strict):
    type: str
    metadata: dict[str, str]
    authenticationRef: AuthenticationRef | None = None
    name: str | None = None
    useCachedMetrics: bool | None = None
    metricType: Literal["AverageValue", "Value", "Utilization"] | None = None

    @model_validator(mode="after")
    def _redis_streams(self) -> "Trigger":
        if self.type != "redis-streams":
            return self
        meta = self.metadata
        unknown = set(meta) - REDIS_STREAMS_METADATA
        assert not unknown, f"unknown redis-streams metadata: {sorted(unknown)}"
        assert "stream" in meta, "redis-streams needs a stream"
        assert {"address", "addressFromEnv", "host", "hostFromEnv"} & set(meta), "redis-streams needs an address"
        if "lagCount" in meta:
            assert "consumerGroup" in meta and "activationLagCount" in meta, "lagCount needs consumerGroup and " \
                                                                             "activationLagCount"
        for key in ("lagCount", "activationLagCount", "pendingEntriesCount", "streamLength", "databaseIndex"):
            if key in meta:
                assert meta[key].isdigit(), f"{key} must be a whole number in a string"
        return self


class HpaConfig(_Strict):
    behavior: dict | None = None
    name: str | None = None


class Advanced(_Strict):
    horizontalPodAutoscalerConfig: HpaConfig | None = None
    restoreToOriginalReplicaCount: bool | None = None


class ScaledObjectSpec(_Strict):
    scaleTargetRef: ScaleTargetRef
    pollingInterval: int | None = Field(None, ge=1)
    cooldownPeriod: int | None = Field(None, ge=0)
    idleReplicaCount: int | None = Field(None, ge=0)
    minReplicaCount: int | None = Field(None, ge=0)
    maxReplicaCount: int | None = Field(None, ge=1)
    advanced: Advanced | None = None
    triggers: list[Trigger] = Field(min_length=1)

    @model_validator(mode="after")
    def _bounds(self) -> "ScaledObjectSpec":
        assert (self.minReplicaCount or 0) <= (self.maxReplicaCount or 100), "minReplicaCount > maxReplicaCount"
        return self


class ScaledObject(_Strict):
    apiVersion: Literal["keda.sh/v1alpha1"]
    kind: Literal["ScaledObject"]
    metadata: Metadata
    spec: ScaledObjectSpec


class SecretTargetRef(_Strict):
    parameter: str
    name: str
    key: str


class TriggerAuthenticationSpec(_Strict):
    secretTargetRef: list[SecretTargetRef] = Field(min_length=1)


class TriggerAuthentication(_Strict):
    apiVersion: Literal["keda.sh/v1alpha1"]
    kind: Literal["TriggerAuthentication"]
    metadata: Metadata
    spec: TriggerAuthenticationSpec


KEDA_MODELS = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_is_valid(overlay):
    docs = rendered(overlay)
    assert docs
    for doc in docs:
        assert doc.get("metadata", {}).get("namespace") in ("emotion", None) or doc["kind"] == "Namespace"
        if doc["kind"] in KEDA_MODELS:
            KEDA_MODELS[doc["kind"]].model_validate(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "emotion", f"{doc['kind']}/{doc['metadata']['name']}"


def test_validators_reject_broken_resources():
    """The checks above can fail: a misspelt Deployment field, a ScaledObject without its consumer group."""
    deployment = by_kind(rendered("in-cluster"), "Deployment")["classifier"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(by_kind(rendered("external"), "ScaledObject")["classifier"]))
    del scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"]
    with pytest.raises(ValueError, match="consumerGroup"):
        ScaledObject.model_validate(scaled)
    scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] = "classifier"
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(ValueError):
        ScaledObject.model_validate(scaled)


# --- security --------------------------------------------------------------------------------------

def run_checkov(path: Path) -> dict:
    import json

    result = subprocess.run([checkov_binary(), "-f", str(path), "--framework", "kubernetes", "--quiet", "--compact",
                             "--skip-download", "--skip-check", ",".join(CHECKOV_SKIPS), "-o", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_passes(overlay):
    report = run_checkov(K8S / "rendered" / f"{overlay}.yaml")
    failed = [(c["check_id"], c["resource"]) for c in report.get("results", {}).get("failed_checks", [])]
    assert report["summary"]["passed"] > 100 and not failed, failed


def test_checkov_catches_a_writable_root_filesystem(tmp_path):
    """The check above can fail: the same render with one container's root filesystem writable and
    privilege escalation allowed is refused for exactly those."""
    docs = rendered("in-cluster")
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "classifier":
            context = doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]
            context["readOnlyRootFilesystem"] = False
            context["allowPrivilegeEscalation"] = True
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    report = run_checkov(path)
    failed = {(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]}
    assert failed == {("CKV_K8S_22", "Deployment.emotion.classifier"), ("CKV_K8S_20", "Deployment.emotion.classifier")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_a_read_only_root(overlay):
    for doc in rendered(overlay):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"], container["name"]
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]


# --- consistency with the services -----------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_are_the_services_own(overlay):
    deployments = by_kind(rendered(overlay), "Deployment")
    for doc in deployments.values():
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        port = container["ports"][0]
        assert port["containerPort"] == (DEFAULT_PORTS.get(component) or 8050), doc["metadata"]["name"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
        assert container["args"][:2] == ["emotion", component]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments.values()} == \
        {*STREAM_SERVICES, "dashboard"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap_and_secrets_from_the_secret(overlay, monkeypatch):
    """Every EMOTION_* name is a real setting; nothing secret is in the ConfigMap; the settings load;
    and the shipped placeholder token is refused (nobody runs with it by accident)."""
    from services.dashboard.auth import AuthConfigError, check_auth_config
    from shared.settings import Settings

    docs = rendered(overlay)
    config = by_kind(docs, "ConfigMap")["emotion-config"]["data"]
    secret = by_kind(docs, "Secret")["emotion-secrets"]["stringData"]
    assert not unknown_env_names({**config, **secret})
    assert not [name for name in config if any(word in name for word in ("PASSWORD", "TOKEN", "_URL"))]
    assert {"REDIS_URL", "DATABASE_URL", "EMOTION_DASHBOARD__AUTH_TOKEN"} <= set(secret)
    assert config["EMOTION_METRICS__HOST"] == "0.0.0.0"
    for doc in by_kind(docs, "Deployment").values():
        sources = doc["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "emotion-config"}} in sources and \
            {"secretRef": {"name": "emotion-secrets"}} in sources
    for name in list(os.environ):
        if name.startswith("EMOTION_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    for name, value in {**config, **secret, "EMOTION_DASHBOARD__HOST": "0.0.0.0"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url == secret["REDIS_URL"] and settings.metrics.host == "0.0.0.0"
    with pytest.raises(AuthConfigError, match="placeholder"):
        check_auth_config(settings)


def shard_keys(docs: list[dict]) -> Keys:
    """The deployment's key names as the services will derive them from the ConfigMap."""
    config = by_kind(docs, "ConfigMap")["emotion-config"]["data"]
    return Keys(config["EMOTION_PREFIX"], int(config["EMOTION_SHARDS"]))


def test_in_cluster_overlay_runs_redis_and_postgres_and_scales_on_cpu():
    docs = rendered("in-cluster")
    assert set(by_kind(docs, "StatefulSet")) == {"redis", "postgres"}
    secret = by_kind(docs, "Secret")["emotion-secrets"]["stringData"]
    services = by_kind(docs, "Service")
    assert secret["REDIS_URL"].startswith("redis://redis:6379/") and "redis" in services
    assert "@postgres:5432/" in secret["DATABASE_URL"] and "postgres" in services
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpas["classifier"]["spec"]["scaleTargetRef"]["name"] == "classifier"
    assert hpas["classifier"]["spec"]["maxReplicas"] > 1
    # detector replicas beyond the shard count would only stand by
    keys = shard_keys(docs)
    assert keys.shards > 1 and hpas["detector"]["spec"]["maxReplicas"] == keys.shards
    assert not by_kind(docs, "ScaledObject")


def test_external_overlay_scales_on_consumer_group_lag_with_keda():
    """One trigger per shard, on the exact key of that shard's stream (hash tag included, as
    shared/streams.py names it for the ConfigMap's prefix and shard count), each with TLS; the
    detector scales up to the shard count."""
    docs = rendered("external")
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "HorizontalPodAutoscaler")
    config = by_kind(docs, "ConfigMap")["emotion-config"]["data"]
    secret = by_kind(docs, "Secret")["emotion-secrets"]["stringData"]
    assert "redis:6379" not in secret["REDIS_URL"] and "@postgres:" not in secret["DATABASE_URL"]
    keys = shard_keys(docs)
    scaled = by_kind(docs, "ScaledObject")
    deployments = by_kind(docs, "Deployment")
    auths = by_kind(docs, "TriggerAuthentication")
    expected = {"classifier": ("faces", CLASSIFIER_GROUP), "detector": ("frames", DETECTOR_GROUP)}
    for name, (stream, group) in expected.items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        triggers = spec["triggers"]
        assert [(t["metadata"]["stream"], t["metadata"]["consumerGroup"]) for t in triggers] == \
            [(getattr(shard, stream), group) for shard in keys.all_shards()], name
        for trigger in triggers:
            assert trigger["type"] == "redis-streams"
            assert trigger["metadata"]["addressFromEnv"] in config  # the scale target's own environment
            assert trigger["metadata"]["enableTLS"] == "true"  # rediss:// in the Secret
            for ref in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
                assert ref["key"] in by_kind(docs, "Secret")[ref["name"]]["stringData"]
        assert len({t["name"] for t in triggers}) == len(triggers)
    assert scaled["classifier"]["spec"]["maxReplicaCount"] > 1
    assert keys.shards > 1 and scaled["detector"]["spec"]["maxReplicaCount"] == keys.shards


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cameras_name_a_shard_of_the_layout(overlay):
    """Each capture Deployment's --shard is a shard of EMOTION_SHARDS (the services refuse another)."""
    docs = rendered(overlay)
    keys = shard_keys(docs)
    captures = [doc for doc in by_kind(docs, "Deployment").values()
                if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "capture"]
    assert captures
    for doc in captures:
        args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        assert 0 <= int(args[args.index("--shard") + 1]) < keys.shards
