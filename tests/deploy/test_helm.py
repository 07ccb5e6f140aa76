"""The Helm chart (helm/bpm-autopilot): it lints and renders offline with helm-python-sdk for the default values
and values-production.yaml; every rendered manifest validates against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate; the Prometheus Operator's CRDs, which it has no schema for, are checked by hand); the values
schema rejects bad values; the workers never outnumber the Kafka partitions; the retraining CronJob never overlaps;
every container has resources, the security context, and the API its probes."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import CHART, PRODUCTION_VALUES, Rendered, production_values, render_chart

pytestmark = pytest.mark.integration

KUBE_VERSION = "1.31.0"  # kubernetes-validate 1.37 ships schemas from 1.25 to 1.37
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # monitoring.coreos.com: no schema in kubernetes-validate


def _helm() -> Any:
    import helm_python

    return helm_python


def _merged(values: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(values)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_chart_lints_clean(values_file: Any) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = _helm().lint(CHART, values, strict=True, namespace="support", kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (1 info: "icon")
    assert not problems, problems


def test_both_value_sets_pass_the_schema() -> None:
    helm = _helm()
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None and chart.schema["$schema"].endswith("draft-07/schema#")
        chart.validate_schema(chart.values)
        chart.validate_schema(chart.merge_values(production_values()))


def _validate_crd(doc: dict[str, Any]) -> None:
    """The shape the Prometheus Operator needs (what kubernetes-validate cannot check)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, sorted(doc)
    assert doc["metadata"]["name"] and all(isinstance(v, str) for v in doc["metadata"]["labels"].values())
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, sorted(spec)
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}, sorted(endpoint)
            assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    else:
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, sorted(rule)
                assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str)


def test_every_manifest_validates_strictly(release: Rendered) -> None:
    assert release.docs
    skipped: set[str] = set()
    for doc in release.docs:
        if doc["kind"] in CRD_KINDS:
            _validate_crd(doc)
            skipped.add(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    # Only the CRDs escape the schema check (and only where the monitors are enabled).
    assert skipped <= CRD_KINDS


def test_expected_objects(default_release: Rendered, production_release: Rendered) -> None:
    base = {
        "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount", "Service", "Deployment",
        "HorizontalPodAutoscaler", "CronJob", "NetworkPolicy", "PodDisruptionBudget",
    }  # fmt: skip
    default_kinds = {doc["kind"] for doc in default_release.docs}
    assert default_kinds == base, sorted(default_kinds ^ base)  # Ingress and the monitors are off by default
    production_kinds = {doc["kind"] for doc in production_release.docs}
    # Production: an existing Secret (none rendered), the ingress and the Prometheus Operator's monitors.
    assert production_kinds == (base - {"Secret"}) | {"Ingress", "ServiceMonitor", "PrometheusRule"}
    assert {d["metadata"]["name"] for d in default_release.kinds("Deployment")} == {
        "autopilot-bpm-autopilot-api",
        "autopilot-bpm-autopilot-worker",
    }


def test_prometheus_rule_carries_the_alert_file(production_release: Rendered) -> None:
    rule = production_release.one("PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yml").read_text())
    assert rule["spec"] == alerts


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"workers": {"replicas": "two"}}, "/workers/replicas"),
        ({"workers": {"replica": 2}}, "replica"),  # a typo: unknown key
        ({"unknownTopLevel": True}, "unknownTopLevel"),
        ({"config": {"initialStage": "yolo"}}, "initialStage"),
        ({"retrain": {"alpha": 1.5}}, "alpha"),
        ({"retrain": {"concurrencyPolicy": "Sometimes"}}, "concurrencyPolicy"),
        ({"kafka": {"partitions": 0}}, "partitions"),
        ({"api": {"port": 70000}}, "port"),
        ({"bpm": {"url": "bpm:8000"}}, "url"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ],
)
def test_schema_rejects_bad_values(patch: dict[str, Any], needle: str) -> None:
    helm = _helm()
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as rejected:
            chart.validate_schema(chart.merge_values(patch))
        assert needle in str(rejected.value)
        with pytest.raises(helm.HelmValuesError):  # an install renders with the same check
            chart.render(patch, name="bad")
    # helm lint reports it as an error too.
    report = helm.lint(CHART, patch)
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


def _partitions(release: Rendered) -> int:
    return int(release.one("ConfigMap", "-config")["data"]["AUTOPILOT_PARTITIONS"])


def test_workers_never_outnumber_partitions(release: Rendered) -> None:
    partitions = _partitions(release)
    hpa = release.one("HorizontalPodAutoscaler", "-worker")
    assert hpa["spec"]["scaleTargetRef"]["name"] == release.one("Deployment", "-worker")["metadata"]["name"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    worker = release.one("Deployment", "-worker")
    assert worker["spec"].get("replicas", 0) <= partitions
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # not even during a rollout


def test_hpa_max_defaults_to_partitions() -> None:
    rendered = render_chart({"kafka": {"partitions": 5}, "workers": {"autoscaling": {"minReplicas": 2}}})
    assert rendered.one("HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 5
    fixed = render_chart({"workers": {"replicas": 3, "autoscaling": {"enabled": False}}})
    assert fixed.one("Deployment", "-worker")["spec"]["replicas"] == 3
    assert not fixed.kinds("HorizontalPodAutoscaler")


@pytest.mark.parametrize(
    "values",
    [
        {"kafka": {"partitions": 4}, "workers": {"replicas": 5}},
        {"kafka": {"partitions": 4}, "workers": {"autoscaling": {"maxReplicas": 6}}},
        {"kafka": {"partitions": 4}, "workers": {"replicas": 2, "autoscaling": {"minReplicas": 5}}},
    ],
)
def test_more_workers_than_partitions_fail_to_render(values: dict[str, Any]) -> None:
    helm = _helm()
    with pytest.raises(helm.HelmRenderError) as failed:
        render_chart(values)
    assert "must not exceed" in str(failed.value)


def test_retraining_cronjob(release: Rendered) -> None:
    cron = release.one("CronJob", "-critic-retrain")
    spec = cron["spec"]
    assert spec["schedule"] == "0 2 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["critic", "retrain"]
    flags = dict(zip(args[2::2], args[3::2], strict=False))
    assert flags["--feedback"] == "$(AUTOPILOT_FEEDBACK_URL)" and flags["--registry"] == "$(AUTOPILOT_REGISTRY_DIR)"
    assert float(flags["--alpha"]) == 0.1
    env = {e["name"] for e in container["env"]}
    assert "AUTOPILOT_FEEDBACK_URL" in env  # the $(...) references resolve
    # The job writes the registry: the data volume is mounted read-write.
    assert not any(m.get("readOnly") for m in container["volumeMounts"] if m["name"] == "data")


def _security(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def test_every_container_is_locked_down(release: Rendered) -> None:
    specs = release.pod_specs()
    assert len(specs) == 3, sorted(specs)  # the API, the workers, the retraining job
    for key, pod in specs.items():
        tmp = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            where = f"{key}/{container['name']}"
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["cpu"] and resources["limits"]["memory"], where
            assert _security(pod, container, "runAsNonRoot") is True, where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert _security(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}, where
            assert _security(pod, container, "runAsUser") == 10001, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in tmp, f"{where}: /tmp must be an emptyDir (read-only root file system)"
            assert container["image"].startswith("bpm-autopilot:"), where


def test_api_probes_and_tokens(release: Rendered) -> None:
    api = release.one("Deployment", "-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert env["AUTOPILOT_WORKERS"]["value"] == "0"  # the workers run in their own Deployment
    assert env["AUTOPILOT_HOST"]["value"] == "0.0.0.0"
    # idle connections outlive the ingress's upstream keep-alive (60 s in ingress-nginx), so the proxy closes first
    assert int(env["AUTOPILOT_KEEP_ALIVE_S"]["value"]) > 60
    tokens_file = env["AUTOPILOT_TOKENS_FILE"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    # Mounted as a directory, never with subPath: an updated Secret then reaches the running pod.
    assert "subPath" not in mount and tokens_file.startswith(mount["mountPath"] + "/")
    volume = next(v for v in api["spec"]["template"]["spec"]["volumes"] if v["name"] == "tokens")
    assert volume["secret"]["secretName"] == env["AUTOPILOT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
    service = release.one("Service", "-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


def test_existing_secret_is_used(production_release: Rendered) -> None:
    assert not production_release.kinds("Secret")
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in production_release.containers().values()
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert names == {"bpm-autopilot-secrets"}
    ingress = production_release.one("Ingress")
    assert ingress["spec"]["tls"][0]["hosts"] == ["autopilot.example.com"]


def test_gpu_worker_values_render_and_validate() -> None:
    """docs/deploy.md's GPU example: the policy's workers on GPU nodes."""
    values = {
        "workers": {
            "resources": {
                "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1},
                "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1},
            },
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    }
    rendered = render_chart(values)
    worker = rendered.one("Deployment", "-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    kubernetes_validate.validate(worker, KUBE_VERSION, strict=True)


def test_disabled_persistence_and_existing_claim() -> None:
    claim = render_chart({"persistence": {"existingClaim": "shared-models"}})
    assert not claim.kinds("PersistentVolumeClaim")
    volumes = [
        v["persistentVolumeClaim"]["claimName"]
        for spec in claim.pod_specs().values()
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert volumes == ["shared-models"] * 3


def test_values_production_overrides_are_known(production_release: Rendered) -> None:
    values = production_values()
    assert values["workers"]["autoscaling"]["maxReplicas"] <= values["kafka"]["partitions"]
    assert "," in values["kafka"]["bootstrap"]  # an external cluster
    assert values["metrics"]["serviceMonitor"]["enabled"] and values["metrics"]["prometheusRule"]["enabled"]
    assert _partitions(production_release) == values["kafka"]["partitions"]


def test_risk_file_is_mounted_into_the_api_and_the_workers() -> None:
    """values.risk (a RiskPolicy) becomes a ConfigMap file at AUTOPILOT_RISK_FILE in the API and the workers, and
    the runtime loads it; without it no variable is set (every action critic-gated)."""
    import json

    from schemas.risk import RiskPolicy

    risk = json.loads((CHART.parents[1] / "sandbox" / "risk.json").read_text())
    rendered = render_chart({"risk": risk})
    config = next(doc for doc in rendered.kinds("ConfigMap") if doc["metadata"]["name"].endswith("-config"))
    assert config["data"]["AUTOPILOT_RISK_FILE"] == "/etc/autopilot/risk/risk.json"
    risk_map = next(doc for doc in rendered.kinds("ConfigMap") if doc["metadata"]["name"].endswith("-risk"))
    assert RiskPolicy.model_validate_json(risk_map["data"]["risk.json"]) == RiskPolicy.model_validate(risk)
    for suffix in ("-api", "-worker"):
        pod = rendered.one("Deployment", suffix)["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["risk"] == "/etc/autopilot/risk"
        assert any(v["name"] == "risk" and "configMap" in v for v in pod["volumes"])
        kubernetes_validate.validate(rendered.one("Deployment", suffix), KUBE_VERSION, strict=True)
    plain = render_chart({})
    plain_config = next(doc for doc in plain.kinds("ConfigMap") if doc["metadata"]["name"].endswith("-config"))
    assert "AUTOPILOT_RISK_FILE" not in plain_config["data"]
    assert not any(doc["metadata"]["name"].endswith("-risk") for doc in plain.kinds("ConfigMap"))


def test_policy_batcher_settings_reach_the_pods(release: Rendered) -> None:
    data = release.one("ConfigMap", "-config")["data"]
    for key in ("MAX_BATCH", "MAX_WAIT_MS", "MAX_QUEUE", "TIMEOUT_S"):
        assert data[f"AUTOPILOT_POLICY_{key}"], key
    assert data["AUTOPILOT_POLICY_PROCESSES"] == "0"  # the policy in the pod's own process unless asked
    assert "AUTOPILOT_POLICY_SERVER_URL" not in data  # the default policy runs in process
    assert not any(d["metadata"]["name"].endswith("-policy-server") for d in release.docs)


def test_gpu_policy_server_renders_and_validates() -> None:
    """docs/deploy.md's large policy: an SGLang server on a GPU node, and the API and workers pointed at it."""
    rendered = render_chart({"policy": {"server": {"enabled": True, "image": {"tag": "v0.5.5"}}}})
    server = rendered.one("Deployment", "-policy-server")
    pod = server["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["image"] == "lmsysorg/sglang:v0.5.5"
    assert "/data/policy" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/data", "/tmp", "/dev/shm"}
    service = rendered.one("Service", "-policy-server")
    assert service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
    url = rendered.one("ConfigMap", "-config")["data"]["AUTOPILOT_POLICY_SERVER_URL"]
    assert url == f"http://{service['metadata']['name']}:30000"
    for doc in (server, service):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    external = render_chart({"policy": {"server": {"url": "http://gpu-pool.inference:30000"}}})
    assert (
        external.one("ConfigMap", "-config")["data"]["AUTOPILOT_POLICY_SERVER_URL"] == "http://gpu-pool.inference:30000"
    )


def test_gpu_policy_server_needs_a_pinned_image() -> None:
    with pytest.raises(Exception, match=r"policy.server.image.tag"):
        render_chart({"policy": {"server": {"enabled": True}}})
