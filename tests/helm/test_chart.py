"""Tests of the Helm chart helm/lakescore with the real Helm engine.

Helm v4's Go SDK does the linting and rendering (helm-python-sdk binds libhelm_c, no
`helm` binary needed), kubernetes-validate checks every rendered object against the
Kubernetes OpenAPI schemas, and the lakescore binary itself checks the configuration the
chart writes (`lakescore check-config`) and answers the probes the chart points at.

Run with scripts/test-helm, or: python -m pytest tests/helm
Environment:
  LAKESCORE_BIN        the lakescore binary (default: $CARGO_TARGET_DIR/debug/lakescore,
                       else ~/.cache/lakescore/target/debug/lakescore)
  ORT_DYLIB_PATH       libonnxruntime.so.1.31.x for the worker start-up check (default:
                       the onnxruntime wheel installed next to this Python)
  LAKESCORE_TEST_STRICT=1  a missing binary or ONNX Runtime fails instead of skipping
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmError, HelmValuesError

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lakescore"
EXAMPLES = ["minimal", "production-azure", "production-s3"]
CASES = ["default", *EXAMPLES]
RELEASE = "lakescore"
NAMESPACE = "ml"
# The chart's minimum (Chart.yaml kubeVersion) and the newest Kubernetes that
# kubernetes-validate knows.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
STRICT = os.environ.get("LAKESCORE_TEST_STRICT") == "1"

# Environment variables that carry credentials: only ever from a Secret.
SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY$|_KEY_|DATABASE_URL|_SAS|CONNECTION_STRING)")
# user:password@ in a URL
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")


# --------------------------------------------------------------------------- helpers


def example_values(case: str) -> dict[str, Any] | None:
    if case == "default":
        return None
    return yaml.safe_load((CHART / "examples" / f"{case}.yaml").read_text())


def render(values: dict[str, Any] | None) -> dict[str, str]:
    with Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                out.append(doc)
    return out


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "_template"}


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(objs: list[dict[str, Any]], kind: str, comp: str) -> list[dict[str, Any]]:
    return [o for o in find(objs, kind) if o["metadata"]["labels"].get("app.kubernetes.io/component") == comp]


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield o, o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield o, o["spec"]


def config_toml(objs: list[dict[str, Any]]) -> str:
    # The one configuration (besides the Grafana dashboard's ConfigMap, when enabled).
    cms = [cm for cm in find(objs, "ConfigMap") if "lakescore.toml" in cm.get("data", {})]
    assert len(cms) == 1
    return cms[0]["data"]["lakescore.toml"]


def lakescore_bin() -> Path:
    if os.environ.get("LAKESCORE_BIN"):
        path = Path(os.environ["LAKESCORE_BIN"])
    else:
        target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "lakescore" / "target")
        path = Path(target) / "debug" / "lakescore"
    if not (path.is_file() and os.access(path, os.X_OK)):
        msg = f"lakescore binary not found at {path} (build it, or set LAKESCORE_BIN)"
        if STRICT:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def onnxruntime_lib() -> Path:
    for var in ("ORT_DYLIB_PATH", "LAKESCORE_ONNXRUNTIME_LIB"):
        if os.environ.get(var):
            return Path(os.environ[var])
    try:
        import onnxruntime  # noqa: PLC0415
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        libs = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
        if libs:
            return libs[-1]
    msg = "no ONNX Runtime library (set ORT_DYLIB_PATH or install tests/requirements.txt)"
    if STRICT:
        pytest.fail(msg)
    pytest.skip(msg)


def fake_secret_value(env_name: str, secret: str, key: str) -> str:
    """A plausible value for an env var the chart takes from a Secret."""
    if env_name == "LAKESCORE_DATABASE_URL":
        return "postgres://lakescore:not-a-real-password@postgres.example:5432/lakescore?sslmode=require"
    if env_name == "LAKESCORE_OIDC_ISSUER":
        return "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"
    if env_name == "LAKESCORE_OIDC_AUDIENCES":
        return "api://lakescore"
    if env_name == "LAKESCORE_OIDC_ALLOWED_TENANTS":
        return "00000000-0000-0000-0000-000000000000"
    return f"fake-{secret}-{key}"


def container_env(container: dict[str, Any], config_path: Path) -> dict[str, str]:
    """The environment Kubernetes would give the container (Secrets faked, $(VAR) expanded)."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        name = e["name"]
        if "value" in e:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            value = fake_secret_value(name, ref["name"], ref["key"])
        elif "fieldRef" in e.get("valueFrom", {}):
            value = "10.1.2.3"
        else:
            raise AssertionError(f"unexpected env source in {e}")
        env[name] = value
    assert env.get("LAKESCORE_CONFIG") == "/etc/lakescore/lakescore.toml"
    env["LAKESCORE_CONFIG"] = str(config_path)
    return env


def run_bin(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(lakescore_bin()), *args], env={**base, **env}, capture_output=True, text=True, timeout=60, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p["name"] == port:
            return p["containerPort"]
    raise AssertionError(f"container {container['name']} has no port named {port}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> str:
    return request.param


_RENDERED: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def objs(case: str) -> list[dict[str, Any]]:
    if case not in _RENDERED:
        _RENDERED[case] = objects(render(example_values(case)))
    return _RENDERED[case]


# --------------------------------------------------------------------------- lint + schema


@pytest.mark.parametrize("case", CASES)
def test_lint_has_no_errors(case: str) -> None:
    for kube in KUBE_VERSIONS:
        report = lint(CHART, example_values(case), strict=True, namespace=NAMESPACE, kube_version=f"v{kube}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["total_charts_linted"] == 1, report
        assert report["errors"] == [], report
        assert problems == [], problems


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    for key, sub in schema.get("properties", {}).items():
        paths |= _schema_paths(sub, f"{prefix}.{key}" if prefix else key)
    return paths


def _value_paths(values: Any, schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Paths of values.yaml down to where the schema stops describing named keys."""
    if isinstance(values, dict) and "properties" in schema:
        for key, sub in values.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _value_paths(sub, schema.get("properties", {}).get(key, {}), path)


def test_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    described = _schema_paths(schema)
    missing = [p for p in _value_paths(values, schema) if p not in described]
    assert missing == [], f"values.yaml keys without a schema entry: {missing}"

    # every object the schema names is closed: a misspelled key is an error, not ignored
    def closed(s: dict[str, Any], path: str) -> Iterator[str]:
        if "properties" in s:
            if s.get("additionalProperties") is not False:
                yield path or "<root>"
            for k, sub in s["properties"].items():
                yield from closed(sub, f"{path}.{k}" if path else k)
        if isinstance(s.get("items"), dict):
            yield from closed(s["items"], f"{path}[]")

    assert list(closed(schema, "")) == []


@pytest.mark.parametrize(
    "values, message",
    [
        ({"registry": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"registry": {"database": {"url": "postgres://u:p@db/x"}}}, "additional properties 'url' not allowed"),
        ({"registry": {"storage": {"options": {"aws_secret_access_key": "x"}}}}, "aws_secret_access_key"),
        ({"scorer": {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}}, "/scorer/extraEnv/0"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"scorer": {"config": {"graphOptimization": "max"}}}, "graphOptimization"),
    ],
)
def test_schema_rejects(values: dict[str, Any], message: str) -> None:
    with Chart.load(CHART) as chart:
        with pytest.raises(HelmValuesError, match=re.escape(message)):
            chart.validate_schema(values)


# --------------------------------------------------------------------------- Kubernetes schemas


def test_manifests_validate_against_kubernetes(objs: list[dict[str, Any]]) -> None:
    assert objs, "nothing rendered"
    for obj in objs:
        ident = f"{obj['kind']}/{obj['metadata']['name']} ({obj['_template']})"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # a Prometheus Operator CRD: no upstream schema; check its shape here
            assert obj["kind"] == "ServiceMonitor", ident
            endpoint = obj["spec"]["endpoints"][0]
            component_name = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            port = {"registry": "http", "scorer": "metrics"}[component_name]
            assert endpoint["port"] == port and endpoint["path"] == "/metrics", ident
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(obj), kube, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{ident} is invalid for Kubernetes {kube}: {e.message}") from None
        assert obj["metadata"].get("namespace") == NAMESPACE, ident


def test_names_are_unique_and_labelled(objs: list[dict[str, Any]]) -> None:
    seen = set()
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        assert len(obj["metadata"]["name"]) <= 63
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# --------------------------------------------------------------------------- workloads


def test_hpa_targets_the_scorer_deployment(case: str, objs: list[dict[str, Any]]) -> None:
    values = example_values(case) or {}
    autoscaling = values.get("scorer", {}).get("autoscaling", {}).get("enabled", True)
    scorers = component(objs, "Deployment", "scorer")
    assert len(scorers) == 1
    scorer = scorers[0]
    hpas = find(objs, "HorizontalPodAutoscaler")
    if not autoscaling:
        assert hpas == []
        assert scorer["spec"]["replicas"] >= 1
        return
    assert len(hpas) == 1
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": scorer["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # the HPA owns the replica count; a fixed one would fight it on every upgrade
    assert "replicas" not in scorer["spec"]
    # CPU utilization is measured against the request: there must be one
    container = scorer["spec"]["template"]["spec"]["containers"][0]
    for metric in hpa["spec"]["metrics"]:
        assert container["resources"]["requests"][metric["resource"]["name"]]


def test_containers_are_restricted(objs: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(objs))
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o, _ in specs} >= {"registry"}
    for owner, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        assert spec.get("automountServiceAccountToken") is False
        for vol in spec.get("volumes", []):
            assert "hostPath" not in vol, vol
        for c in spec.get("initContainers", []) + spec["containers"]:
            ident = f"{owner['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, ident
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert uid is None or uid > 0, ident
            assert sc.get("readOnlyRootFilesystem") is True, ident
            assert sc.get("allowPrivilegeEscalation") is False, ident
            assert sc.get("privileged") is not True, ident
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], ident
            assert not sc.get("capabilities", {}).get("add"), ident
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", ident
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], ident
            # writable places are volumes, since the root filesystem is read-only
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, ident
            # servers read their config from the ConfigMap; the batch Job's client takes flags
            if owner["metadata"]["labels"]["app.kubernetes.io/component"] != "batch-job":
                assert mounts["/etc/lakescore"].get("readOnly") is True, ident


def test_no_secret_value_is_inlined(objs: list[dict[str, Any]]) -> None:
    assert_no_inlined_secrets(objs)


def assert_no_inlined_secrets(objs: list[dict[str, Any]]) -> None:
    # the chart never creates Secrets: it only references the ones the user made
    assert find(objs, "Secret") == []
    for owner, spec in pod_specs(objs):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if SECRET_ENV.search(e["name"]) or e["name"].startswith("LAKESCORE_OIDC_"):
                    assert "value" not in e, f"{owner['metadata']['name']}: {e['name']} is inlined"
                    assert "secretKeyRef" in e["valueFrom"], e
            assert "envFrom" not in c or all("configMapRef" not in s for s in c["envFrom"])
    for obj in objs:
        text = yaml.safe_dump(strip(obj))
        assert not CREDENTIAL_URL.search(text), f"{obj['kind']}/{obj['metadata']['name']} holds a credential URL"
    config = tomllib.loads(config_toml(objs))
    assert "database_url" not in config["registry"]
    for section in ("registry", "scorer"):
        for key in config[section].get("storage_options", {}):
            assert not re.search(r"(secret|password|access_key|account_key|sas|token|credential)", key), key


def test_secret_references(objs: list[dict[str, Any]], case: str) -> None:
    values = example_values(case) or {}
    registry = component(objs, "Deployment", "registry")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in registry["env"]}
    secret = values.get("registry", {}).get("database", {}).get("existingSecret")
    if secret:
        assert env["LAKESCORE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret
    else:
        assert "LAKESCORE_DATABASE_URL" not in env


def test_secret_env_and_oidc_secret_are_references() -> None:
    values = yaml.safe_load((CHART / "examples" / "production-s3.yaml").read_text())
    values["registry"]["secretEnv"] = [
        {"name": "AWS_ACCESS_KEY_ID", "secretName": "lakescore-s3", "key": "access-key-id"},
        {"name": "AWS_SECRET_ACCESS_KEY", "secretName": "lakescore-s3", "key": "secret-access-key"},
    ]
    values["scorer"]["extraEnv"] = [
        {"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": {"name": "lakescore-s3", "key": "token"}}}
    ]
    objs = objects(render(values))
    assert_no_inlined_secrets(objs)
    registry = component(objs, "Deployment", "registry")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in registry["env"] if "valueFrom" in e}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "lakescore-s3", "key": "secret-access-key"}
    assert env["LAKESCORE_OIDC_ISSUER"] == {"name": "lakescore-oidc", "key": "oidc-issuer"}
    assert env["LAKESCORE_OIDC_ALLOWED_TENANTS"]["optional"] is True


def test_probes_point_at_the_binarys_endpoints(objs: list[dict[str, Any]]) -> None:
    config = tomllib.loads(config_toml(objs))
    registry_port = int(config["registry"]["listen"].rsplit(":", 1)[1])
    scorer_port = int(config["scorer"]["listen"].rsplit(":", 1)[1])

    [registry] = component(objs, "Deployment", "registry")
    [c] = registry["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["registry"]
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert container_port(c, probe["port"]) == registry_port

    [svc] = [s for s in component(objs, "Service", "registry")]
    assert container_port(c, svc["spec"]["ports"][0]["targetPort"]) == registry_port

    for scorer in component(objs, "Deployment", "scorer"):
        [c] = scorer["spec"]["template"]["spec"]["containers"]
        assert c["args"] == ["scorer"]
        # Alive: the metrics listener's /healthz; ready: grpc.health.v1 on the Flight port.
        metrics_port = int(next(e["value"] for e in c["env"] if e["name"] == "LAKESCORE_METRICS_LISTEN").rsplit(":", 1)[1])
        for kind in ("startupProbe", "livenessProbe"):
            assert c[kind]["httpGet"]["path"] == "/healthz"
            assert container_port(c, c[kind]["httpGet"]["port"]) == metrics_port
        assert set(c["readinessProbe"]) & {"httpGet", "tcpSocket", "exec"} == set()
        assert c["readinessProbe"]["grpc"]["port"] == scorer_port
        services = component(objs, "Service", "scorer")
        assert {s["spec"].get("clusterIP") for s in services} == {None, "None"}
        for s in services:
            assert container_port(c, s["spec"]["ports"][0]["targetPort"]) == scorer_port
            assert s["spec"]["selector"] == {
                k: v for k, v in scorer["spec"]["selector"]["matchLabels"].items()
            }


def test_network_policies(objs: list[dict[str, Any]]) -> None:
    policies = find(objs, "NetworkPolicy")
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in policies} == {"registry", "scorer"}
    # The workers: Flight, and the metrics and health listener (Prometheus, the kubelet).
    allowed = {"registry": {"http"}, "scorer": {"flight", "metrics"}}
    for p in policies:
        comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
        assert p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == comp
        for rule in p["spec"]["ingress"]:
            assert {port["port"] for port in rule["ports"]} == allowed[comp]


def test_registry_replicas_are_safe(case: str, objs: list[dict[str, Any]]) -> None:
    [registry] = component(objs, "Deployment", "registry")
    config = tomllib.loads(config_toml(objs))
    if registry["spec"]["replicas"] > 1:
        env = {e["name"] for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "LAKESCORE_DATABASE_URL" in env
        assert re.match(r"^(s3|az|gs)://", config["registry"]["storage_url"])
        pdb = component(objs, "PodDisruptionBudget", "registry")
        assert pdb and pdb[0]["spec"]["maxUnavailable"] == 1
    if case.startswith("production"):
        assert registry["spec"]["replicas"] >= 2
        assert config["insecure_no_auth"] is False and "oidc" in config["auth"]


# --------------------------------------------------------------------------- the binary


def test_binary_accepts_the_chart_config(objs: list[dict[str, Any]], tmp_path: Path) -> None:
    config_file = tmp_path / "lakescore.toml"
    config_file.write_text(config_toml(objs))
    config = tomllib.loads(config_file.read_text())
    for owner, spec in pod_specs(objs):
        for c in spec["containers"]:
            env = container_env(c, config_file)
            ident = f"{owner['metadata']['name']}/{c['name']}"
            done = run_bin(["check-config"], env)
            assert done.returncode == 0, f"{ident}: check-config failed:\n{done.stderr}"
            assert "configuration OK" in done.stderr
            effective = tomllib.loads(done.stdout)
            assert effective["registry"]["listen"] == config["registry"]["listen"]
            assert effective["registry"]["data_dir"] == "/var/lib/lakescore"
            if "LAKESCORE_DATABASE_URL" in env:
                assert effective["registry"]["database_url"].startswith("postgres://")
            # The process drains within what the pod's grace period leaves after preStop.
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            want = max(1, spec["terminationGracePeriodSeconds"] - pre_stop - 5)
            assert effective["shutdown_grace_secs"] == want, f"{ident}: {effective['shutdown_grace_secs']} != {want}"
            if c["args"] == ["scorer"]:
                # check-config applies the authentication posture to [registry].listen only;
                # the worker listens on [scorer].listen, so check that address as well.
                done = run_bin(["check-config"], {**env, "LAKESCORE_LISTEN": config["scorer"]["listen"]})
                assert done.returncode == 0, f"{ident}: worker listen address refused:\n{done.stderr}"


def test_the_image_accepts_the_chart_config(objs: list[dict[str, Any]], tmp_path: Path) -> None:
    """`check-config` inside the built image (scripts/run-image: its user, read-only root), on
    the rendered config mounted where the chart mounts it, with each container's environment."""
    image = os.environ.get("LAKESCORE_TEST_IMAGE")
    if not image:
        pytest.skip("LAKESCORE_TEST_IMAGE is not set (scripts/test builds the image when buildah is installed)")
    config_dir = tmp_path / "config"
    config_dir.mkdir(mode=0o755)
    config_dir.chmod(0o755)
    (config_dir / "lakescore.toml").write_text(config_toml(objs))
    for owner, spec in pod_specs(objs):
        for c in spec["containers"]:
            ident = f"{owner['metadata']['name']}/{c['name']}"
            env = container_env(c, Path("/etc/lakescore/lakescore.toml"))
            cmd = [str(ROOT / "scripts" / "run-image"), image, "--volume", f"{config_dir}:/etc/lakescore:ro"]
            for key, value in env.items():
                cmd += ["--env", f"{key}={value}"]
            done = subprocess.run([*cmd, "--", "check-config"], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{ident}: check-config in the image failed:\n{done.stderr}"
            assert "configuration OK" in done.stderr, f"{ident}: {done.stderr}"


def test_the_batch_job_scores_over_every_worker(tmp_path: Path) -> None:
    """batchJob renders a Job (or a CronJob with a schedule) that runs `lakescore score` over
    the headless worker Service, resumable by its Job name, restricted like every pod, and
    with arguments the binary parses."""
    job_values = {
        "enabled": True,
        "model": "fraud@champion",
        "input": "s3://lake/tx/",
        "output": "s3://lake/scores/",
        "featureColumns": ["f0", "f1"],
        "tokenSecret": {"name": "batch-token", "key": "token"},
        "settings": {"miniBatchSize": 4, "maxRetries": 2, "timeoutSecs": 600, "maxConcurrency": 2,
                     "errorThresholdRows": 100, "errorThresholdUnits": -1, "summaryOnly": False},
    }
    for schedule in ("", "0 2 * * *"):
        objs = objects(render({"batchJob": {**job_values, "schedule": schedule}}))
        kind = "CronJob" if schedule else "Job"
        [job] = component(objs, kind, "batch-job")
        for obj in objs:
            kubernetes_validate.validate(strip(obj), KUBE_VERSIONS[-1], strict=True)
        test_containers_are_restricted(objs)
        assert_no_inlined_secrets(objs)
        spec = job["spec"]["jobTemplate"]["spec"] if schedule else job["spec"]
        [container] = spec["template"]["spec"]["containers"]
        args = container["args"]
        [headless] = [o for o in find(objs, "Service") if o["metadata"]["name"].endswith("-scorer-headless")]
        assert f"--workers=grpc://{headless['metadata']['name']}.{NAMESPACE}.svc:8815" in args, args
        assert "--job-id=$(LAKESCORE_JOB_NAME)" in args and "--max-concurrency=2" in args, args
        env = {e["name"]: e for e in container["env"]}
        assert env["LAKESCORE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "batch-token"
        # The binary takes these arguments: it gets as far as looking the workers up.
        expanded = [a.replace("$(LAKESCORE_JOB_NAME)", "nightly-1") for a in args]
        done = run_bin(expanded, {})
        assert done.returncode != 0 and "cannot resolve the worker name" in done.stderr, done.stderr
    assert not find(objects(render(None)), "Job") and not find(objects(render(None)), "CronJob")
    with pytest.raises(HelmError, match="batchJob.model"):
        render({"batchJob": {"enabled": True}})


EVERY_SETTING = {
    "auth": {
        "insecureNoAuth": False,
        "oidc": {
            "enabled": True,
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
            "additionalIssuers": ["https://sts.windows.net/{tenantid}/"],
            "allowedTenants": ["00000000-0000-0000-0000-000000000000"],
            "audiences": ["api://lakescore", "api://lakescore-dev"],
            "discoveryUrl": "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "jwksUrl": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            "clockSkewSecs": 30,
            "jwksRefreshCooldownSecs": 60,
            "jwksMaxAgeSecs": 7200,
            "httpTimeoutSecs": 5,
        },
        "claims": {"subject": ["oid"], "roles": "roles", "groups": "groups", "scopes": "scp", "appId": ["azp"]},
        "roles": {"reader": ["authenticated"], "writer": ["scope:models.write"], "admin": ["app:1234"]},
    },
    "registry": {
        "replicas": 2,
        "database": {"existingSecret": "db"},
        "storage": {"url": "s3://models/lakescore", "options": {"aws_region": "eu-west-1", "aws_endpoint": "https://s3.example"}},
        "config": {
            "maxUploadBytes": 2147483648,
            "allowedOpDomains": ["", "ai.onnx", "ai.onnx.ml"],
            "dbMaxConnections": 32,
            "storageRetryTimeoutSecs": 45,
            "storageMaxRetries": 5,
        },
    },
    "scorer": {
        "advertiseLocation": "grpc://scoring.example:8815",
        "intraOpThreads": 3,
        "storage": {"roots": ["s3://lake/in/", "s3://lake/out/"], "options": {"aws_region": "eu-west-1"}},
        "config": {
            "graphOptimization": "extended",
            "modelCacheBytes": 1073741824,
            "inferenceBatchRows": 8192,
            "maxBatchRows": 1048576,
            "maxBatchBytes": 268435456,
            "maxMessageBytes": 268435456,
            "maxRowsPerFile": 1000000,
            "rowGroupRows": 65536,
            "registryTimeoutSecs": 30,
            "maxArtifactBytes": 1073741824,
        },
    },
    "bindAddress": "::",
}


def test_every_setting_the_chart_writes_is_accepted(tmp_path: Path) -> None:
    """Every optional key the chart can put in the TOML, set at once: the binary (whose
    config structs deny unknown fields) must accept all of them, with their values."""
    objs = objects(render(EVERY_SETTING))
    assert_no_inlined_secrets(objs)
    text = config_toml(objs)
    config = tomllib.loads(text)
    for section, n in (("registry", 7), ("scorer", 14), ("auth", 3)):
        assert len(config[section]) >= n, (section, config[section])
    assert config["registry"]["listen"] == "[::]:8080" and config["scorer"]["listen"] == "[::]:8815"
    config_file = tmp_path / "lakescore.toml"
    config_file.write_text(text)
    [registry] = component(objs, "Deployment", "registry")
    env = container_env(registry["spec"]["template"]["spec"]["containers"][0], config_file)
    done = run_bin(["check-config"], env)
    assert done.returncode == 0, done.stderr
    effective = tomllib.loads(done.stdout)
    assert effective["registry"]["max_upload_bytes"] == 2147483648
    assert effective["registry"]["storage_options"] == {"aws_region": "eu-west-1", "aws_endpoint": "https://s3.example"}
    assert effective["auth"]["oidc"]["jwks_max_age_secs"] == 7200
    assert effective["auth"]["claims"]["subject"] == ["oid"]
    assert effective["auth"]["roles"]["admin"] == ["app:1234"]
    # check-config does not print [scorer]; its keys were accepted by the strict parser above
    broken = text.replace("row_group_rows", "row_group_row")
    config_file.write_text(broken)
    assert run_bin(["check-config"], env).returncode != 0


def test_check_config_rejects_a_broken_config(tmp_path: Path) -> None:
    # the check above is only worth something if check-config does reject bad files
    objs = _RENDERED.get("default") or objects(render(None))
    good = config_toml(objs)
    broken = good.replace("[scorer]", "[scorer]\nmodel_cache = 1", 1)
    (tmp_path / "broken.toml").write_text(broken)
    done = run_bin(["check-config"], {"LAKESCORE_CONFIG": str(tmp_path / "broken.toml")})
    assert done.returncode != 0 and "model_cache" in done.stderr
    # and, without OIDC, a pod-network listen address needs insecure_no_auth
    (tmp_path / "open.toml").write_text(good.replace("insecure_no_auth = true", "insecure_no_auth = false"))
    done = run_bin(["check-config"], {"LAKESCORE_CONFIG": str(tmp_path / "open.toml")})
    assert done.returncode != 0 and "without authentication" in done.stderr


def need(module: str) -> Any:
    """Import a module of tests/requirements.txt (pyarrow, onnx); skip without it unless strict."""
    try:
        return __import__("importlib").import_module(module)
    except ImportError:
        if STRICT:
            pytest.fail(f"{module} is missing (pip install -r tests/requirements.txt)")
        pytest.skip(f"{module} is missing (pip install -r tests/requirements.txt)")


def tiny_model() -> bytes:
    """A one-node ONNX model: y = relu(x), x: float[N, 2]."""
    onnx = need("onnx")
    from onnx import TensorProto, helper  # noqa: PLC0415

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "helm_smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _post(url: str, body: bytes, content_type: str) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": content_type})
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 201, r.status
        return r.read()


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_registry_and_worker_run_on_the_chart_config(tmp_path: Path) -> None:
    """Start the registry and a worker from the chart's default config and env (ports and
    data dir moved to the test's), probe them exactly as the kubelet would, then score
    through the worker -> registry path the chart wires up."""
    objs = _RENDERED.get("default") or objects(render(None))
    config_file = tmp_path / "lakescore.toml"
    config_file.write_text(config_toml(objs))
    [registry] = component(objs, "Deployment", "registry")
    [scorer] = component(objs, "Deployment", "scorer")
    rc = registry["spec"]["template"]["spec"]["containers"][0]
    sc = scorer["spec"]["template"]["spec"]["containers"][0]
    http_port, flight_port = free_port(), free_port()
    log = open(tmp_path / "servers.log", "w")
    procs = []
    try:
        env = container_env(rc, config_file)
        env.update(LAKESCORE_LISTEN=f"127.0.0.1:{http_port}", LAKESCORE_DATA_DIR=str(tmp_path / "data"))
        procs.append(
            subprocess.Popen([str(lakescore_bin()), *rc["args"]], env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=log)
        )
        ort = onnxruntime_lib()
        env = container_env(sc, config_file)
        # the chart's registry URL (scheme included), pointed at the local registry
        scheme = tomllib.loads(config_file.read_text())["scorer"]["model_source"].split("://", 1)[0]
        metrics_port = free_port()
        env.update(
            LAKESCORE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
            LAKESCORE_FLIGHT_LISTEN=f"127.0.0.1:{flight_port}",
            LAKESCORE_REGISTRY_URL=f"{scheme}://127.0.0.1:{http_port}",
            LAKESCORE_ONNXRUNTIME_LIB=str(ort),
        )
        procs.append(
            subprocess.Popen([str(lakescore_bin()), *sc["args"]], env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=log)
        )
        probes = [(rc[k]["httpGet"]["path"]) for k in ("startupProbe", "livenessProbe", "readinessProbe")]
        # The worker's HTTP probes, and its /readyz: the state its grpc.health.v1 reports.
        worker_probes = {sc[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe")} | {"/readyz"}
        deadline = time.monotonic() + 60
        pending_http, pending_tcp = set(probes), True
        pending_worker = set(worker_probes)
        while (pending_http or pending_tcp or pending_worker) and time.monotonic() < deadline:
            for p in procs:
                assert p.poll() is None, f"a server exited:\n{(tmp_path / 'servers.log').read_text()}"
            for path in list(pending_http):
                try:
                    if _http_status(f"http://127.0.0.1:{http_port}{path}") == 200:
                        pending_http.discard(path)
                except OSError:
                    pass
            for path in list(pending_worker):
                try:
                    if _http_status(f"http://127.0.0.1:{metrics_port}{path}") == 200:
                        pending_worker.discard(path)
                except OSError:
                    pass
            if pending_tcp:
                try:
                    socket.create_connection(("127.0.0.1", flight_port), timeout=1).close()
                    pending_tcp = False
                except OSError:
                    pass
            time.sleep(0.2)
        assert not pending_worker, f"no 200 from the worker's {pending_worker}:\n{(tmp_path / 'servers.log').read_text()}"
        assert not pending_http, f"no 200 from {pending_http}:\n{(tmp_path / 'servers.log').read_text()}"
        assert not pending_tcp, f"worker not listening:\n{(tmp_path / 'servers.log').read_text()}"
        # a made-up path is a 404, so the 200s above are real endpoints
        assert _http_status(f"http://127.0.0.1:{http_port}/no-such-probe") == 404
        assert _http_status(f"http://127.0.0.1:{http_port}/metrics") == 200
        assert _http_status(f"http://127.0.0.1:{metrics_port}/metrics") == 200

        # the wiring works: register a model, then have the worker resolve, fetch and load
        # it from the registry (through the chart's registry URL scheme, with the ONNX
        # Runtime library the chart names)
        flight = need("pyarrow.flight")
        base = f"http://127.0.0.1:{http_port}/api/v1"
        _post(f"{base}/models", json.dumps({"name": "helm-smoke"}).encode(), "application/json")
        version = json.loads(_post(f"{base}/models/helm-smoke/versions", tiny_model(), "application/octet-stream"))
        client = flight.connect(f"grpc://127.0.0.1:{flight_port}")
        [result] = list(client.do_action(flight.Action("warm", b"helm-smoke")))
        warmed = json.loads(result.body.to_pybytes())
        assert warmed["sha256"] == version["sha256"], warmed
        client.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    "values, message",
    [
        ({"auth": {"insecureNoAuth": False}}, "enable auth.oidc"),
        ({"ingress": {"enabled": True}}, "refusing to expose a registry without authentication"),
        ({"scorer": {"service": {"type": "LoadBalancer"}}}, "refusing a LoadBalancer/NodePort Service"),
        ({"registry": {"replicas": 2}}, "needs PostgreSQL"),
        (
            {"registry": {"replicas": 2, "database": {"existingSecret": "db"}}},
            "needs object storage",
        ),
        (
            {"auth": {"oidc": {"enabled": True, "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
                               "audiences": ["api://lakescore"]}}},
            "allowedTenants",
        ),
        ({"auth": {"oidc": {"enabled": True, "issuer": "https://idp.example"}}}, "auth.oidc.audiences"),
    ],
)
def test_unsafe_or_broken_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        render(values)


def test_oidc_turns_insecure_mode_off() -> None:
    values = {
        "auth": {
            "insecureNoAuth": True,
            "oidc": {"enabled": True, "issuer": "https://idp.example", "audiences": ["api://lakescore"]},
        }
    }
    config = tomllib.loads(config_toml(objects(render(values))))
    assert config["insecure_no_auth"] is False
    assert config["auth"]["oidc"] == {"issuer": "https://idp.example", "audiences": ["api://lakescore"]}


VARIANTS = {
    "registry-only": {"scorer": {"enabled": False}},
    "no-service-accounts": {
        "registry": {"serviceAccount": {"create": False, "name": "ml-apps"}},
        "scorer": {"serviceAccount": {"create": False}},
    },
    "digest-and-pull-secret": {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "egress-locked": {"networkPolicy": {"egress": {"enabled": True}}},
    "existing-claim": {"registry": {"persistence": {"enabled": True, "existingClaim": "registry-data"}}},
    "fixed-workers": {
        "scorer": {"autoscaling": {"enabled": False}, "replicas": 4, "advertisePodIP": False, "preStopSleepSeconds": 0}
    },
    "no-policies": {"networkPolicy": {"enabled": False}, "registry": {"podDisruptionBudget": {"enabled": False}}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_render_valid_manifests(variant: str, tmp_path: Path) -> None:
    objs = objects(render(VARIANTS[variant]))
    for obj in objs:
        kubernetes_validate.validate(strip(obj), KUBE_VERSIONS[-1], strict=True)
    test_containers_are_restricted(objs)
    assert_no_inlined_secrets(objs)
    if find(objs, "NetworkPolicy") and component(objs, "Deployment", "scorer"):
        test_network_policies(objs)
    test_binary_accepts_the_chart_config(objs, tmp_path)
    kinds = {(o["kind"], o["metadata"]["labels"].get("app.kubernetes.io/component")) for o in objs}
    if variant == "registry-only":
        assert not any(c == "scorer" for _, c in kinds)
    if variant == "no-service-accounts":
        assert find(objs, "ServiceAccount") == []
        names = {o["metadata"]["labels"]["app.kubernetes.io/component"]: s["serviceAccountName"] for o, s in pod_specs(objs)}
        assert names == {"registry": "ml-apps", "scorer": "default"}
    if variant == "digest-and-pull-secret":
        for _, spec in pod_specs(objs):
            assert spec["containers"][0]["image"].endswith("@sha256:" + "a" * 64)
            assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    if variant == "egress-locked":
        for p in find(objs, "NetworkPolicy"):
            assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
            assert any(port["port"] == 53 for rule in p["spec"]["egress"] for port in rule.get("ports", []))
    if variant == "existing-claim":
        assert find(objs, "PersistentVolumeClaim") == []
        [registry] = component(objs, "Deployment", "registry")
        volumes = {v["name"]: v for v in registry["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "registry-data"
    if variant == "fixed-workers":
        assert find(objs, "HorizontalPodAutoscaler") == []
        [scorer] = component(objs, "Deployment", "scorer")
        assert scorer["spec"]["replicas"] == 4
        c = scorer["spec"]["template"]["spec"]["containers"][0]
        assert "lifecycle" not in c
        assert "LAKESCORE_ADVERTISE_LOCATION" not in {e["name"] for e in c["env"]}
    if variant == "no-policies":
        assert find(objs, "NetworkPolicy") == []
        assert [p["metadata"]["labels"]["app.kubernetes.io/component"] for p in find(objs, "PodDisruptionBudget")] == ["scorer"]


def test_persistent_sqlite_registry_is_recreated_not_rolled() -> None:
    objs = objects(render(example_values("minimal")))
    [registry] = component(objs, "Deployment", "registry")
    assert registry["spec"]["strategy"] == {"type": "Recreate"}
    [pvc] = find(objs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in registry["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_the_dashboard_queries_metrics_the_worker_records() -> None:
    """Every metric the Grafana dashboard charts is one the code records (a renamed metric
    would leave an empty panel), and the ConfigMap carries the dashboard as it is."""
    objs = objects(render(yaml.safe_load((CHART / "examples" / "production-azure.yaml").read_text())))
    [cm] = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["lakescore.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "lakescore.json").read_text())
    queried = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"lakescore_[a-z_]+", target["expr"])
    }
    source = "\n".join(p.read_text() for p in ROOT.glob("*/src/**/*.rs"))
    recorded = set(re.findall(r'"(lakescore_[a-z_]+)"', source))
    assert queried and queried <= recorded, sorted(queried - recorded)

