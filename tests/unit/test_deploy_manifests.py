"""The deployment files pass offline schema validation and say what the design says.

- `compose.yaml` against the Compose Specification's JSON Schema (kept in
  shared/schemas), before and after variable interpolation;
- every manifest under `k8s/` against the Kubernetes JSON schemas that
  `kubernetes-validate` ships (strict: unknown fields fail), and KEDA's
  ScaledObject / TriggerAuthentication against schemas written here from
  KEDA's documented fields;
- cross-checks that no schema can make: secret references resolve, one
  ScaledObject per worker Deployment on that worker's queue, resources match
  the queue class, one image everywhere;
- the Dockerfile installs the package as pyproject.toml describes it, as a
  non-root user;
- where kubectl is installed, `kubectl kustomize` (offline) builds `k8s/` and
  the overlay docs/deploy.md shows.

No Docker engine, no cluster and no network are needed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import textwrap
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
COMPOSE_SCHEMA = ROOT.parent / "shared/schemas/compose-spec.json"
K8S_DIR = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs/deploy.md"

QUEUES = ("cpu", "gpu", "highmem")
WORKER_SERVICES = {f"worker-{q}": q for q in QUEUES}
# The Kubernetes version whose schemas the manifests must pass.
K8S_VERSION = "1.30.0"
REDIS_IMAGE = "redis:7"
# Variables `docker compose up` refuses to run without.
COMPOSE_REQUIRED_VARS = {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}


# --------------------------------------------------------------------------
# helpers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def flag(argv: list[str], name: str) -> str | None:
    """The value after `name` in an argv list, or None."""
    if name in argv:
        i = argv.index(name)
        return argv[i + 1] if i + 1 < len(argv) else None
    return None


_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[_A-Za-z][_A-Za-z0-9]*))")
_BRACED = re.compile(
    r"^(?P<name>[_A-Za-z][_A-Za-z0-9]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.DOTALL
)


class MissingVariable(Exception):
    """A `${VAR:?message}` whose variable is unset (Compose stops with the message)."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over every string of a loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        braced = _BRACED.match(m.group("braced"))
        if braced is None:
            raise ValueError(f"invalid interpolation {m.group(0)!r}")
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg")
        val = env.get(name)
        if op in (":?", "?") and (val is None or (op == ":?" and val == "")):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and (val is None or (op == ":-" and val == "")):
            return arg
        if op in (":+", "+"):
            return arg if val else ""
        return val or ""

    return _INTERPOLATION.sub(substitute, value)


def variables_in(value: Any) -> Iterator[tuple[str, str | None, bool]]:
    """(name, operator, braced) for every `${NAME...}` and `$NAME` in a loaded file."""
    if isinstance(value, dict):
        for v in value.values():
            yield from variables_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from variables_in(v)
    elif isinstance(value, str):
        for m in _INTERPOLATION.finditer(value):
            if m.group("named"):
                yield m.group("named"), None, False
            elif m.group("braced") is not None:
                braced = _BRACED.match(m.group("braced"))
                assert braced, f"invalid interpolation {m.group(0)!r}"
                yield braced.group("name"), braced.group("op"), True


# --------------------------------------------------------------------------
# compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(
            f"the shared Compose schema is missing: {COMPOSE_SCHEMA} (shared/schemas/compose-spec.json)"
        )
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The schema names draft-07 by an URI jsonschema does not map (no '#').
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


COMPOSE_ENV = {"REDIS_PASSWORD": "0123abcd", "FLOWER_BASIC_AUTH": "admin:secret"}


def test_compose_file_matches_the_compose_specification(compose, compose_validator):
    assert schema_errors(compose_validator, compose) == []


def test_compose_file_still_matches_after_interpolation(compose, compose_validator):
    assert schema_errors(compose_validator, interpolate(compose, COMPOSE_ENV)) == []


def test_compose_refuses_to_start_without_its_secrets(compose):
    required = {name for name, op, _ in variables_in(compose) if op in (":?", "?")}
    assert required == COMPOSE_REQUIRED_VARS
    for missing in COMPOSE_REQUIRED_VARS:
        env = {k: v for k, v in COMPOSE_ENV.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(compose, env)


def test_compose_variables_are_braced_and_documented(compose):
    """A bare `$NAME` would be Compose's, not the container's (that is `$$NAME`)."""
    found = list(variables_in(compose))
    assert [name for name, _, braced in found if not braced] == []
    doc = DEPLOY_DOC.read_text()
    assert sorted({name for name, _, _ in found if f"`{name}`" not in doc}) == []


def test_compose_redis_persists_never_evicts_and_needs_a_password(compose):
    redis = compose["services"]["redis"]
    assert redis["image"] == REDIS_IMAGE
    cmd = redis["command"]
    assert isinstance(cmd, list) and cmd[0] == "redis-server"
    assert flag(cmd, "--appendonly") == "yes"
    assert flag(cmd, "--maxmemory-policy") == "noeviction"
    password = flag(cmd, "--requirepass")
    assert password is not None and re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", password)
    volume = next(v for v in redis["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in compose["volumes"], "the Redis volume must be a named volume"
    assert redis["healthcheck"]["test"]


@pytest.mark.parametrize("service, queue", sorted(WORKER_SERVICES.items()))
def test_compose_worker_serves_its_queue_and_scales(compose, service, queue):
    worker = compose["services"][service]
    cmd = worker["command"]
    assert cmd[:2] == ["chordflow", "worker"]
    assert flag(cmd, "--queues") == queue
    # `docker compose up --scale worker-cpu=8` needs unnamed containers
    # without fixed host ports.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert isinstance(worker["deploy"]["replicas"], int) and worker["deploy"]["replicas"] >= 1
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["worker-cpu", "worker-highmem"])
def test_compose_worker_sets_its_concurrency(compose, service):
    """Replicas share one host: each must not fork one process per host CPU."""
    concurrency = interpolate(flag(compose["services"][service]["command"], "--concurrency"), {})
    assert concurrency is not None and int(concurrency) >= 1


def test_compose_gpu_worker_reserves_an_nvidia_gpu(compose):
    worker = compose["services"]["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d["capabilities"]]
    assert len(nvidia) == 1
    assert str(nvidia[0]["count"]) == flag(worker["command"], "--gpus") == "1"


def test_compose_highmem_worker_declares_its_memory(compose):
    worker = compose["services"]["worker-highmem"]
    env = {"HIGHMEM_GB": "96"}
    gb = interpolate(flag(worker["command"], "--memory-gb"), env)
    reserved = interpolate(worker["deploy"]["resources"]["reservations"]["memory"], env)
    assert gb == "96" and reserved == "96g"
    assert interpolate(flag(worker["command"], "--memory-gb"), {}) == "64"


def test_compose_flower_has_basic_auth_and_its_port(compose):
    flower = compose["services"]["flower"]
    assert flower["command"] == ["chordflow", "flower", "--port", "5555", "--address", "0.0.0.0"]
    auth = flower["environment"]["CHORDFLOW_FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth)
    published = [interpolate(p, {}) for p in flower["ports"]]
    assert published == ["127.0.0.1:5555:5555"]


def test_compose_beat_runs_once(compose):
    beat = compose["services"]["beat"]
    assert beat["command"] == ["chordflow", "beat"]
    assert beat.get("deploy", {}).get("replicas", 1) == 1


def test_compose_chordflow_services_share_image_and_redis_url(compose):
    services = {n: s for n, s in compose["services"].items() if n != "redis"}
    assert set(services) == set(WORKER_SERVICES) | {"flower", "beat"}
    resolved = interpolate(services, COMPOSE_ENV)
    assert {s["image"] for s in resolved.values()} == {"chordflow:local"}
    for name, service in resolved.items():
        assert service["command"][0] == "chordflow", name
        assert service["build"]["context"] == "."
        env = service["environment"]
        assert env["CHORDFLOW_REDIS_URL"] == "redis://:0123abcd@redis:6379/0", name
        assert env["CHORDFLOW_KEY_PREFIX"] == "chordflow", name


# --------------------------------------------------------------------------
# k8s/


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def doc_id(entry: tuple[str, dict[str, Any]]) -> str:
    name, doc = entry
    return f"{name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


DOCS = k8s_docs()
KEDA_API = "keda.sh/v1alpha1"


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def workloads() -> dict[str, dict[str, Any]]:
    return {
        f"{d['kind']}/{d['metadata']['name']}": d
        for _, d in DOCS
        if d["kind"] in ("Deployment", "StatefulSet")
    }


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def chordflow_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, c)
        for name, w in workloads().items()
        for c in containers(w)
        if c["image"].split(":")[0].rsplit("/", 1)[-1] == "chordflow"
    ]


def worker_deployments() -> dict[str, dict[str, Any]]:
    """Worker Deployments by queue, from `chordflow worker --queues Q`."""
    found: dict[str, dict[str, Any]] = {}
    for d in by_kind("Deployment").values():
        argv = d["spec"]["template"]["spec"]["containers"][0].get("args", [])
        if argv[:2] == ["chordflow", "worker"]:
            queue = flag(argv, "--queues")
            assert queue not in found, f"two worker Deployments for queue {queue}"
            found[queue] = d
    return found


_DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _DNS_NAME,
        "namespace": _DNS_NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
_STRING_NUMBER = {"type": "string", "pattern": r"^[0-9]+$"}
_STRING_BOOL = {"type": "string", "enum": ["true", "false"]}

# KEDA 2.x, from its documented ScaledObject specification and redis scaler.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": KEDA_API},
        "kind": {"const": "ScaledObject"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _DNS_NAME,
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer"},
                        "replicas": {"type": "integer"},
                        "behavior": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                # autoscaling/v2 HorizontalPodAutoscalerBehavior
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": _DNS_NAME,
                                    "kind": {
                                        "enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]
                                    },
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        # The `redis` (lists) scaler's metadata.
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {
                            "properties": {
                                "metadata": {
                                    "required": ["listName"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "address": {"type": "string", "pattern": r"^[^:/\s]+:[0-9]+$"},
                                        "host": {"type": "string"},
                                        "port": _STRING_NUMBER,
                                        "addressFromEnv": {"type": "string"},
                                        "hostFromEnv": {"type": "string"},
                                        "portFromEnv": {"type": "string"},
                                        "usernameFromEnv": {"type": "string"},
                                        "passwordFromEnv": {"type": "string"},
                                        "listName": {"type": "string", "minLength": 1},
                                        "listLength": _STRING_NUMBER,
                                        "activationListLength": _STRING_NUMBER,
                                        "enableTLS": _STRING_BOOL,
                                        "unsafeSsl": _STRING_BOOL,
                                        "databaseIndex": _STRING_NUMBER,
                                    },
                                    "oneOf": [
                                        {"required": ["address"]},
                                        {"required": ["host", "port"]},
                                        {"required": ["addressFromEnv"]},
                                        {"required": ["hostFromEnv", "portFromEnv"]},
                                    ],
                                }
                            }
                        },
                    },
                },
            },
        },
    },
}

_SECRET_TARGET_REF = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["parameter", "name", "key"],
        "additionalProperties": False,
        "properties": {"parameter": {"type": "string"}, "name": _DNS_NAME, "key": {"type": "string"}},
    },
}

TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": KEDA_API},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": _SECRET_TARGET_REF,
                "configMapTargetRef": _SECRET_TARGET_REF,
                "env": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "boundServiceAccountToken": {"type": "array"},
            },
        },
    },
}

KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}

KUSTOMIZATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "resources"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
        "kind": {"const": "Kustomization"},
        "namespace": _DNS_NAME,
        "resources": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "labels": {"type": "array"},
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"},
                },
            },
        },
    },
}


def test_k8s_has_manifests():
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Namespace", "Secret", "StatefulSet", "Service", "Deployment", "ScaledObject"} <= kinds


@pytest.mark.parametrize("entry", DOCS, ids=doc_id)
def test_k8s_manifest_matches_its_schema(entry):
    _, doc = entry
    if doc.get("apiVersion") == KEDA_API:
        schema = KEDA_SCHEMAS.get(doc["kind"])
        assert schema is not None, f"no schema here for KEDA kind {doc['kind']}: add one"
        validator = jsonschema.Draft202012Validator(schema)
        validator.check_schema(schema)
        assert schema_errors(validator, doc) == []
        return
    kv = pytest.importorskip(
        "kubernetes_validate.utils",
        reason="kubernetes-validate is not installed (it is a test dependency: pip install -e .[test])",
    )
    problem = None
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        path = "/".join(map(str, e.path)) or "<root>"
        problem = f"{doc_id(entry)} fails the Kubernetes {e.version} schema at {path}: {e.message}"
    except kv.SchemaNotFoundError as e:
        problem = e.message
    # Outside the except block, so the report is this line, not the whole schema.
    if problem:
        pytest.fail(problem)


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    validator = jsonschema.Draft202012Validator(KUSTOMIZATION_SCHEMA)
    assert schema_errors(validator, kustomization) == []
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    namespace = kustomization["namespace"]
    assert by_kind("Namespace").keys() == {namespace}
    for entry in DOCS:
        _, doc = entry
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc_id(entry)
    image_names = {c["image"].rsplit(":", 1)[0] for _, c in chordflow_containers()}
    assert {i["name"] for i in kustomization.get("images", [])} <= image_names


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH` (offline), or skip where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_kustomize_builds_the_same_objects():
    built = kustomize_build(K8S_DIR)
    ids = sorted((d["kind"], d["metadata"]["name"]) for d in built)
    assert ids == sorted((d["kind"], d["metadata"]["name"]) for _, d in DOCS)


def test_the_documented_overlay_replaces_the_secret(tmp_path):
    """docs/deploy.md's overlay builds, and no placeholder reaches the cluster."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_DOC.read_text(), re.DOTALL)
    (overlay_text,) = [b for b in blocks if "my-overlay/kustomization.yaml" in b]
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(textwrap.dedent(overlay_text))
    (overlay / "secrets.env").write_text("redis-password=0123abcd\nflower-basic-auth=admin:secret\n")
    (tmp_path / "chordflow").symlink_to(ROOT, target_is_directory=True)
    built = kustomize_build(overlay)
    (secret,) = [d for d in built if d["kind"] == "Secret"]
    assert "stringData" not in secret
    assert sorted(secret["data"]) == ["flower-basic-auth", "redis-password"]
    assert secret["metadata"] == by_kind("Secret")["chordflow-secrets"]["metadata"]
    images = {
        c["image"]
        for d in built
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/chordflow:0.1.0"}


def secret_keys() -> dict[str, set[str]]:
    return {
        name: set(s.get("data", {})) | set(s.get("stringData", {})) for name, s in by_kind("Secret").items()
    }


def test_k8s_secret_references_resolve():
    secrets = secret_keys()
    refs: list[tuple[str, str, str | None]] = []
    for wname, w in workloads().items():
        pod = w["spec"]["template"]["spec"]
        for c in containers(w):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((wname, ref["name"], ref["key"]))
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    refs.append((wname, src["secretRef"]["name"], None))
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                refs.append((wname, vol["secret"]["secretName"], None))
    for tname, t in by_kind("TriggerAuthentication").items():
        for ref in t["spec"].get("secretTargetRef", []):
            refs.append((f"TriggerAuthentication/{tname}", ref["name"], ref["key"]))
    assert refs
    missing = [r for r in refs if r[1] not in secrets or (r[2] is not None and r[2] not in secrets[r[1]])]
    assert missing == []


def test_k8s_secret_holds_placeholders_only():
    """Real credentials never live in the repository: they are set at deploy time."""
    for name, secret in by_kind("Secret").items():
        assert "data" not in secret, f"{name}: use stringData placeholders"
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value, f"{name}/{key} looks like a real credential"
    assert secret_keys()["chordflow-secrets"] >= {"redis-password", "flower-basic-auth"}


def test_k8s_env_references_are_defined_before_use():
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for wname, w in workloads().items():
        for c in containers(w):
            defined: set[str] = set()
            for env in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", env.get("value", "")):
                    assert ref in defined, f"{wname}: {env['name']} uses $({ref}) before it is defined"
                defined.add(env["name"])
            for text in c.get("args", []) + c.get("command", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text):
                    assert ref in defined, f"{wname}: args use $({ref}), which is not in env"


def test_k8s_one_image_everywhere():
    chordflow = chordflow_containers()
    assert {c["image"] for _, c in chordflow} == {"chordflow:0.1.0"}
    for wname, c in chordflow:
        # args, not command: the image's tini entrypoint must stay PID 1.
        assert "command" not in c, wname
        assert c["args"][0] == "chordflow", wname
        env = {e["name"]: e for e in c["env"]}
        assert env["CHORDFLOW_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", wname
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password", wname
        assert env["CHORDFLOW_KEY_PREFIX"]["value"] == "chordflow", wname
    redis = [c["image"] for w in by_kind("StatefulSet").values() for c in containers(w)]
    assert redis == [REDIS_IMAGE]


def test_k8s_pods_run_as_non_root():
    for wname, w in workloads().items():
        assert w["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True, wname
        for c in containers(w):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, wname


def test_k8s_selectors_match_their_pods():
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads().items()}
    for name, w in workloads().items():
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods[name].items(), f"{name}: selector does not match its template"
    for sname, svc in by_kind("Service").items():
        selected = [n for n, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items()]
        assert len(selected) == 1, f"Service/{sname} selects {selected}"
        ports = {p.get("name") for c in containers(workloads()[selected[0]]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in ports, f"Service/{sname}: no container port named {target}"


def test_k8s_redis_statefulset_persists_never_evicts_and_needs_a_password():
    redis = by_kind("StatefulSet")["redis"]
    service = by_kind("Service")[redis["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "the StatefulSet's Service must be headless"
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "redis-server"
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--maxmemory-policy") == "noeviction"
    assert flag(args, "--requirepass") == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "chordflow-secrets",
        "key": "redis-password",
    }
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = flag(args, "--dir") or "/data"
    assert any(mounts.get(claim) == data_dir for claim in claims), "AOF must be written to the claimed volume"
    assert container["livenessProbe"] and container["readinessProbe"]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity in base units (bytes, cores)."""
    units = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "m": 1e-3,
    }
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m and m.group(2) in {"", *units}, f"bad quantity {value!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def test_k8s_a_worker_deployment_per_queue_class():
    workers = worker_deployments()
    assert sorted(workers) == sorted(QUEUES)
    for queue, d in workers.items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert d["metadata"]["name"] == f"worker-{queue}"
        assert "exec" in c["livenessProbe"] or "httpGet" in c["livenessProbe"], queue
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], queue


@pytest.mark.parametrize("queue", ["cpu", "highmem"])
def test_k8s_worker_concurrency_fits_its_cpu_request(queue):
    """Without --concurrency a worker forks one process per CPU of the node, not of the pod."""
    (c,) = worker_deployments()[queue]["spec"]["template"]["spec"]["containers"]
    concurrency = flag(c["args"], "--concurrency")
    assert concurrency is not None and int(concurrency) <= quantity(c["resources"]["requests"]["cpu"])
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_k8s_gpu_worker_gets_a_gpu_on_a_gpu_node():
    pod = worker_deployments()["gpu"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == int(flag(c["args"], "--gpus")) == 1
    assert pod["nodeSelector"], "GPU workers must be pinned to GPU nodes"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_k8s_highmem_worker_requests_large_memory():
    (c,) = worker_deployments()["highmem"]["spec"]["template"]["spec"]["containers"]
    request = quantity(c["resources"]["requests"]["memory"])
    limit = quantity(c["resources"]["limits"]["memory"])
    assert request >= 32 * 2**30
    others = [worker_deployments()[q]["spec"]["template"]["spec"]["containers"][0] for q in ("cpu", "gpu")]
    assert all(request > quantity(o["resources"]["requests"]["memory"]) for o in others)
    # The worker's own budget (GiB, as `chordflow worker` counts) fits inside
    # the container's limit.
    assert float(flag(c["args"], "--memory-gb")) * 2**30 < limit


def test_k8s_one_scaled_object_per_worker_on_its_queue():
    workers = worker_deployments()
    deployments = by_kind("Deployment")
    auths = by_kind("TriggerAuthentication")
    scaled = list(by_kind("ScaledObject").values())
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scaled]
    assert all(t in deployments for t in targets), f"ScaledObject targets missing: {targets}"
    assert sorted(targets) == sorted(d["metadata"]["name"] for d in workers.values())
    redis_service = by_kind("Service")["redis"]
    redis_port = redis_service["spec"]["ports"][0]["port"]
    for s in scaled:
        spec = s["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        target = deployments[spec["scaleTargetRef"]["name"]]
        queue = flag(target["spec"]["template"]["spec"]["containers"][0]["args"], "--queues")
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue
        assert trigger["authenticationRef"]["name"] in auths
        # KEDA's operator lives in another namespace: the address is the FQDN.
        address = f"redis.{s['metadata']['namespace']}.svc.cluster.local:{redis_port}"
        assert trigger["metadata"]["address"] == address
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
    for auth in auths.values():
        assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"password"}


def test_k8s_flower_has_basic_auth_and_a_service():
    flower = by_kind("Deployment")["flower"]
    (c,) = flower["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["chordflow", "flower", "--port", "5555", "--address", "0.0.0.0"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["CHORDFLOW_FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "chordflow-secrets", "key": "flower-basic-auth"}
    assert [p["port"] for p in by_kind("Service")["flower"]["spec"]["ports"]] == [5555]


def test_k8s_beat_runs_once():
    beat = by_kind("Deployment")["beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["template"]["spec"]["containers"][0]["args"] == ["chordflow", "beat"]
    assert not any(s["spec"]["scaleTargetRef"]["name"] == "beat" for s in by_kind("ScaledObject").values())


# --------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_builds_on_python_311_slim_as_non_root():
    instructions = dockerfile_instructions()
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for i, a in instructions if i == "ARG")))
    stages = [a.split()[0] for i, a in instructions if i == "FROM"]
    final = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stages[-1])
    assert final == "python:3.11-slim"
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = [a for i, a in instructions if i == "CMD"][-1]
    assert cmd.startswith('["chordflow"')


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_copies_what_pip_install_needs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", pyproject["project"]["readme"], *packages}
    copied = set()
    for instruction, arg in dockerfile_instructions():
        if instruction == "COPY" and "--from" not in arg:
            copied.update(arg.split()[:-1])
    assert needed <= copied
    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert [p for p in sorted(copied) if dockerignored(p, patterns)] == []
    for secret_or_bulk in (".env", ".venv", ".git", "tests"):
        assert dockerignored(secret_or_bulk, patterns), f".dockerignore must exclude {secret_or_bulk}"
