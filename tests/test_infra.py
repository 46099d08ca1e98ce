"""infra/ checked offline: no cluster, no Docker, no network.

Every manifest parses; built-in kinds validate against the Kubernetes OpenAPI schemas that
kubernetes-validate ships (strict: unknown fields are errors, as with `kubectl apply`'s
default field validation); RayCluster/RayJob against the KubeRay CRD schemas kept in
infra/schemas/; the compose file against the compose-spec schema; the Prefect work pool
template with Prefect's own validator and then as the Job it renders; the worker's Helm
values against the chart's schema. Beyond schemas: the Dockerfile installs the project
with the Makefile's commands, no file holds a literal secret, every Ray process and client
has Ray's token and every Prefect server and client Prefect's basic-auth string from a
Secret or a required variable, the names the pieces use to find each other (Secret,
bucket, volume, cluster, pool) agree, and infra/README.md lists every value a user has to
change and creates every Secret the files read.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.resources
import json
import re
import shlex
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import referencing
import referencing.jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SCHEMAS = INFRA / "schemas"
README = INFRA / "README.md"
COMPOSE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
BASE_JOB_TEMPLATE = INFRA / "prefect" / "base-job-template.json"
WORKER_VALUES = INFRA / "prefect" / "worker-values.yaml"
ENV_EXAMPLE = INFRA / ".env.example"

# The oldest Kubernetes minor still offered by the big managed services, and the newest
# kubernetes-validate knows: a manifest must be valid on both.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
K8S_DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"

# Files under infra/ that are YAML but not Kubernetes objects.
NOT_K8S = {COMPOSE, WORKER_VALUES, INFRA / "minio" / "kustomization.yaml"}


# ---------------------------------------------------------------- loading


def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in _yaml_files():
        if path in NOT_K8S:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(INFRA)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_docs() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a workload or KubeRay object."""
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    if doc["kind"] == "RayJob":
        return [doc["spec"]["submitterPodTemplate"]["spec"]] if "submitterPodTemplate" in doc["spec"] else []
    if doc["kind"] in ("Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    return []


K8S_DOCS = _k8s_docs()
BUILTIN_DOCS = [item for item in K8S_DOCS if not item[1]["apiVersion"].startswith("ray.io/")]
KUBERAY_DOCS = [item for item in K8S_DOCS if item[1]["apiVersion"].startswith("ray.io/")]


@functools.lru_cache(maxsize=None)
def _k8s_definitions(version: str) -> dict[str, Any]:
    """kubernetes-validate's strict definitions (every object closed) for ``version``."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())


def _close_objects(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object
    that lists its properties accepts no others (the server would prune them silently
    otherwise, and kubectl's default validation refuses them)."""
    if isinstance(schema, list):
        return [_close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _close_objects(v) for k, v in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed and not closed.get("x-kubernetes-preserve-unknown-fields"):
        closed["additionalProperties"] = False
    return closed


def _load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())


@functools.lru_cache(maxsize=None)
def _kuberay_validators(version: str) -> dict[str, jsonschema.protocols.Validator]:
    raycluster = _close_objects(_load_schema("rayclusters.ray.io_v1.json"))
    rayjob = _close_objects(_load_schema("rayjobs.ray.io_v1.json"))
    registry = referencing.Registry().with_resources(
        [
            (K8S_DEFINITIONS_URI, referencing.jsonschema.DRAFT202012.create_resource(_k8s_definitions(version))),
            (raycluster["$id"], referencing.jsonschema.DRAFT202012.create_resource(raycluster)),
            (rayjob["$id"], referencing.jsonschema.DRAFT202012.create_resource(rayjob)),
        ]
    )
    return {
        kind: jsonschema.Draft202012Validator(schema, registry=registry)
        for kind, schema in (("RayCluster", raycluster), ("RayJob", rayjob))
    }


def _object_meta_validator(version: str) -> jsonschema.protocols.Validator:
    ref = {"$ref": f"{K8S_DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    registry = referencing.Registry().with_resource(
        K8S_DEFINITIONS_URI, referencing.jsonschema.DRAFT202012.create_resource(_k8s_definitions(version))
    )
    return jsonschema.Draft202012Validator(ref, registry=registry)


def _validate_kuberay(doc: dict[str, Any], version: str) -> None:
    _kuberay_validators(version)[doc["kind"]].validate(doc)
    # The API server checks a custom resource's metadata like any object's.
    _object_meta_validator(version).validate(doc["metadata"])


# ---------------------------------------------------------------- parsing and schemas


def test_every_manifest_and_schema_parses():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in K8S_DOCS}
    assert kinds == {
        ("Namespace", "sqz"), ("PersistentVolumeClaim", "imagenet"), ("RayCluster", "sqz"),
        ("RayJob", "sqz-train-imagenet"), ("RayJob", "sqz-sweep-imagenet"),
        ("PersistentVolumeClaim", "minio-data"), ("Deployment", "minio"), ("Service", "minio"),
        ("Job", "minio-create-bucket"), ("NetworkPolicy", "ray-ingress"),
    }  # fmt: skip
    for path in _yaml_files():
        assert list(yaml.safe_load_all(path.read_text())), path
    for path in sorted(INFRA.rglob("*.json")):
        json.loads(path.read_text())
    for path, doc in K8S_DOCS:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        if doc["kind"] != "Namespace":  # everything else lives in the one namespace
            assert doc["metadata"].get("namespace") == "sqz", _doc_id((path, doc))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", BUILTIN_DOCS, ids=_doc_id)
def test_builtin_kinds_validate_against_kubernetes_schemas(item, version):
    kubernetes_validate.validate(item[1], version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", KUBERAY_DOCS, ids=_doc_id)
def test_kuberay_resources_validate_against_crd_schemas(item, version):
    assert item[1]["apiVersion"] == "ray.io/v1"
    _validate_kuberay(item[1], version)


def test_schema_checks_reject_what_a_cluster_would_reject():
    """The checks above can fail: a typo in a KubeRay field, a missing required field, a
    typo inside a pod template (checked through the Kubernetes schema the CRD refers to)
    and a typo in a built-in kind are each refused."""
    version = K8S_VERSIONS[0]
    cluster = _one("RayCluster", "sqz")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = typo["spec"]["workerGroupSpecs"][0].pop("minReplicas")
    missing = copy.deepcopy(cluster)
    del missing["spec"]["workerGroupSpecs"][1]["template"]
    pod_typo = copy.deepcopy(cluster)
    pod_typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    bad_quantity = copy.deepcopy(cluster)
    bad_quantity["spec"]["workerGroupSpecs"][1]["maxReplicas"] = "eight"
    for broken in (typo, missing, pod_typo, bad_quantity):
        with pytest.raises(jsonschema.ValidationError):
            _validate_kuberay(broken, version)
    job = copy.deepcopy(_one("RayJob", "sqz-train-imagenet"))
    del job["spec"]["entrypoint"]
    with pytest.raises(jsonschema.ValidationError):
        _validate_kuberay(job, version)
    deployment = copy.deepcopy(_one("Deployment", "minio"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


def test_compose_file_matches_the_compose_spec():
    schema = _load_schema("compose-spec.json")
    compose = yaml.safe_load(COMPOSE.read_text())
    jsonschema.Draft202012Validator(schema).validate(compose)
    broken = copy.deepcopy(compose)
    broken["services"]["ray-head"]["shm-size"] = broken["services"]["ray-head"].pop("shm_size")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def test_compose_stack_has_the_one_machine_pieces():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"prefect-server", "minio", "minio-init", "ray-head", "prefect-worker"} <= set(services)
    worker = services["prefect-worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "--ray-client-server-port=10001" in services["ray-head"]["command"]
    # The worker serves prefect.yaml's process pool, so its deployments run here unchanged.
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert worker["command"][worker["command"].index("--pool") + 1] in pools
    # Both ways of creating the bucket run the same script.
    assert "./minio/create-bucket.sh:/create-bucket.sh:ro" in services["minio-init"]["volumes"]
    kustomization = yaml.safe_load((INFRA / "minio" / "kustomization.yaml").read_text())
    assert kustomization["configMapGenerator"][0]["files"] == ["create-bucket.sh"]


# ---------------------------------------------------------------- the image


def _makefile_install_commands() -> list[list[str]]:
    """The commands of the Makefile's $(STAMP) recipe, which `make demo` and `make test`
    run first, with make variables expanded and --quiet dropped."""
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, flags=re.M))
    assert re.search(r"^demo: \$\(STAMP\)", text, flags=re.M) and re.search(r"^test: \$\(STAMP\)", text, flags=re.M)
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", text, flags=re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        line = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)].strip(), line.strip().lstrip("@"))
        for part in re.split(r"\s*(?:\|\||&&)\s*", line):
            words = [w for w in shlex.split(part) if w not in ("--quiet", "-q")]
            if "venv" in words or any(w.endswith("/pip") for w in words[:1]):
                commands.append(words)
    return commands


def _dockerfile_run_commands() -> list[list[str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        body = re.sub(r"--mount=\S+", "", line[4:])
        for part in re.split(r"\s*&&\s*", body):
            words = shlex.split(part, comments=False)
            if words and ("venv" in words or words[0].endswith("/pip")):
                commands.append(words)
    return commands


def test_dockerfile_installs_the_project_as_the_readme_does():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = _makefile_install_commands()
    assert makefile == [
        ["python3", "-m", "venv", ".venv"],
        [".venv/bin/pip", "install", "--upgrade", "pip"],
        [".venv/bin/pip", "install", "-e", ".[test]"],
    ]
    docker = _dockerfile_run_commands()
    assert docker[: len(makefile)] == makefile
    # Anything after the project install only adds Ray's cluster extras, pinned to the
    # Ray version that install resolved, so nothing the project pins is changed.
    (extra,) = docker[len(makefile):]
    assert extra[:2] == [".venv/bin/pip", "install"] and len(extra) == 3
    assert re.fullmatch(r"ray\[default\]==\$\(\.venv/bin/python -c 'import ray; print\(ray\.__version__\)'\)", extra[2])


def test_dockerfile_flavours_and_runtime_user():
    text = DOCKERFILE.read_text()
    assert "ARG FLAVOUR=cpu" in text
    assert re.search(r"cpu\) export PIP_EXTRA_INDEX_URL=https://download\.pytorch\.org/whl/cpu", text)
    assert "cuda) ;;" in text
    # The uid the manifests run as is the image's user.
    assert "--uid 1000" in text and "USER sqz" in text
    run_as = {ctx["runAsUser"] for _, doc in K8S_DOCS for ctx in _walk(doc) if isinstance(ctx, dict) and "runAsUser" in ctx}
    assert run_as == {1000}
    # prefect.yaml's pull step changes into $SQZ_PROJECT_DIR; the image sets it.
    assert "SQZ_PROJECT_DIR=/opt/sqz" in text and "WORKDIR /opt/sqz" in text
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert {"**/.venv", "**/.git", "infra/.env"} <= set(ignore)


# ---------------------------------------------------------------- secrets

# AUTH_STRING: Prefect's basic-auth `user:password` (PREFECT_API_AUTH_STRING,
# PREFECT_SERVER_API_AUTH_STRING, the compose variable SQZ_PREFECT_AUTH_STRING, the Secret
# key auth-string); TOKEN covers Ray's RAY_AUTH_TOKEN, SQZ_RAY_AUTH_TOKEN and auth_token.
SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH[_-]?STRING|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
SECRETISH_KEY = re.compile(r"^(?:\w+[_-])?(?:password|passwd|secret|secret[_-]?access[_-]?key|api[_-]?key|token|auth[_-]?string|private[_-]?key)$", re.I)
LEAK_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "MinIO's default credentials": re.compile(r"\bminioadmin\b"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@"),
    # 40 characters of base64 with both cases and a digit: an AWS secret key's shape
    # (a git commit id, 40 lowercase hex characters, is not).
    "an AWS secret access key": re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
}
REQUIRED_VAR = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]*\}$")  # ${NAME:?message}: no default possible


def _literal_secret_findings(path: Path, text: str) -> list[str]:
    """Where ``text`` (the file ``path``) holds something that looks like a secret."""
    found = [f"{path.name}: {what}" for what, pattern in LEAK_PATTERNS.items() if pattern.search(text)]
    if path.suffix in (".yaml", ".yml", ".json"):
        docs = list(yaml.safe_load_all(text)) if path.suffix != ".json" else [json.loads(text)]
        for doc in docs:
            for node in _walk(doc):
                if not isinstance(node, dict):
                    continue
                if node.get("kind") == "Secret" and ({"data", "stringData"} & set(node)):
                    found.append(f"{path.name}: a Secret with its data")
                # A Kubernetes env entry: a secret-looking variable must come valueFrom.
                if isinstance(node.get("name"), str) and "value" in node and SECRETISH_ENV.search(node["name"]):
                    found.append(f"{path.name}: {node['name']} has a literal value")
                for key, value in node.items():
                    if isinstance(key, str) and SECRETISH_KEY.match(key) and isinstance(value, (str, int)) and value != "":
                        if not (isinstance(value, str) and REQUIRED_VAR.match(value)):
                            found.append(f"{path.name}: {key} has a literal value")
                # A compose environment: secret-looking variables only from ${NAME:?...}.
                environment = node.get("environment")
                if isinstance(environment, dict):
                    for key, value in environment.items():
                        if SECRETISH_ENV.search(key) and not (isinstance(value, str) and REQUIRED_VAR.match(value)):
                            found.append(f"{path.name}: {key} is not a required ${{VAR:?}} without default")
    if path.name.startswith(".env"):
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#") and value.strip():
                found.append(f"{path.name}: {key} has a value")
    # Shell commands in docs: `--from-literal=NAME=VALUE` must take a secret from a shell
    # expansion, never spell it out.
    for name, value in re.findall(r"--from-literal=([\w.-]+)=(\S+)", text):
        if SECRETISH_ENV.search(name) and not value.startswith('"$'):
            found.append(f"{path.name}: --from-literal={name} spells out its value")
    return found


def _committed_text_files() -> list[Path]:
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.name != ".env"]
    return sorted(files) + [ROOT / "prefect.yaml"]


def test_no_file_holds_a_literal_secret():
    assert not (INFRA / ".env").exists() or ".env" in (INFRA / ".gitignore").read_text().split()
    findings = [f for path in _committed_text_files() for f in _literal_secret_findings(path, path.read_text())]
    assert findings == []


def test_secrets_come_from_kubernetes_secrets_and_required_variables():
    refs = set()
    for _, doc in K8S_DOCS:
        for node in _walk(doc):
            if isinstance(node, dict) and "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if isinstance(node, dict) and "secretRef" in node:
                refs.add((node["secretRef"]["name"], None))
    assert {("minio-root", "MINIO_ROOT_PASSWORD"), ("sqz-s3", "AWS_SECRET_ACCESS_KEY"), ("sqz-s3", None),
            ("sqz-ray-auth", "auth_token")} <= refs  # fmt: skip
    compose = COMPOSE.read_text()
    assert re.search(r"MINIO_ROOT_PASSWORD: \$\{MINIO_ROOT_PASSWORD:\?", compose)
    assert re.search(r"AWS_SECRET_ACCESS_KEY: \$\{SQZ_S3_SECRET_ACCESS_KEY:\?", compose)
    env_keys = [line.partition("=")[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and not line.startswith("#")]
    required = {m for node in _walk(yaml.safe_load(compose)) if isinstance(node, str) for m in re.findall(r"\$\{(\w+):\?", node)}
    assert set(env_keys) == required


def test_secret_scanner_catches_planted_secrets():
    fake_id = "AKIA" + "Q" * 16
    fake_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
    samples = {
        "a.yaml": f"env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: {fake_secret}\n",
        "b.yaml": "services:\n  s:\n    environment:\n      MINIO_ROOT_PASSWORD: ${MINIO_ROOT_PASSWORD:-hunter2}\n",
        "c.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {k: v}\n",
        "d.yaml": "worker:\n  password: hunter2\n",
        "e.md": f"export AWS_ACCESS_KEY_ID={fake_id}\n",
        "f.md": "kubectl create secret generic x --from-literal=AWS_SECRET_ACCESS_KEY=hunter2\n",
        "g.md": "S3 at http://user:hunter2@minio:9000\n",
        ".env.example": "MINIO_ROOT_PASSWORD=hunter2\n",
        # Ray's token and Prefect's basic-auth string, in each place they appear.
        "h.yml": "services:\n  ray-head:\n    environment:\n      RAY_AUTH_TOKEN: abc123def456\n",
        "i.yml": "services:\n  prefect-server:\n    environment:\n      PREFECT_SERVER_API_AUTH_STRING: admin:hunter2\n",
        "j.yaml": "env:\n  - name: PREFECT_API_AUTH_STRING\n    value: admin:hunter2\n",
        "k.yaml": "env:\n  - name: RAY_AUTH_TOKEN\n    value: abc123def456\n",
        "l.json": json.dumps({"env": [{"name": "PREFECT_API_AUTH_STRING", "value": "admin:hunter2"}]}),
        "m.md": "kubectl create secret generic sqz-ray-auth --from-literal=auth_token=hunter2\n",
        "n.md": "kubectl create secret generic sqz-prefect-auth --from-literal=auth-string=admin:hunter2\n",
        "o.yaml": "worker:\n  basicAuth:\n    authString: admin:hunter2\n",
        "p.yml": "x-ray-env:\n  SQZ_RAY_AUTH_TOKEN: abc123def456\n",
        ".env": "SQZ_PREFECT_AUTH_STRING=admin:hunter2\nSQZ_RAY_AUTH_TOKEN=abc\n",
    }
    for name, text in samples.items():
        assert _literal_secret_findings(Path(name), text), name
    clean = "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: s, key: k}}\n"
    assert _literal_secret_findings(Path("ok.yaml"), clean) == []
    # What the files here do instead is not flagged: the mode is no secret, the values come
    # from a Secret, a required variable or a shell expansion.
    clean_auth = {
        "ok.yml": "services:\n  s:\n    environment:\n      RAY_AUTH_MODE: token\n"
                  "      RAY_AUTH_TOKEN: ${SQZ_RAY_AUTH_TOKEN:?set it}\n"
                  "      PREFECT_API_AUTH_STRING: ${SQZ_PREFECT_AUTH_STRING:?set it}\n",
        "ok2.yaml": "env:\n  - {name: RAY_AUTH_MODE, value: token}\n  - name: PREFECT_API_AUTH_STRING\n"
                    "    valueFrom: {secretKeyRef: {name: sqz-prefect-auth, key: auth-string}}\n",
        "ok.md": 'kubectl create secret generic x --from-literal=auth-string="$(echo "admin:$(openssl rand -hex 20)")"\n',
    }
    for name, text in clean_auth.items():
        assert _literal_secret_findings(Path(name), text) == [], name


# ---------------------------------------------------------------- Prefect

# prefect-kubernetes' worker refuses a job manifest without these paths and values
# (prefect_kubernetes.worker._get_base_job_manifest, checked by the worker's
# KubernetesWorkerJobConfiguration._validate_job_manifest).
PREFECT_REQUIRED_MANIFEST = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "spec": {"template": {"spec": {"parallelism": 1, "completions": 1, "restartPolicy": "Never",
                                   "containers": [{"name": "prefect-job"}]}}},
}  # fmt: skip


def _contains(actual: Any, required: Any) -> bool:
    if isinstance(required, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in required.items())
    if isinstance(required, list):
        return isinstance(actual, list) and len(actual) >= len(required) and all(_contains(a, r) for a, r in zip(actual, required))
    return actual == required


def _k8s_deployment() -> dict[str, Any]:
    """The pipeline's deployment on the Kubernetes pool (each flow has one there)."""
    (deployment,) = [d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
                     if d["work_pool"]["name"] == "sqz-k8s" and d["entrypoint"].endswith(":squeeze_pipeline")]  # fmt: skip
    return deployment


# What the worker adds to each flow run's env: its own Prefect settings (BaseJobConfiguration.
# _base_environment copies every setting it has, secrets included, as plain values).
WORKER_ENV = {"PREFECT_API_URL": "http://prefect-server.sqz.svc.cluster.local:4200/api",
              "PREFECT_API_AUTH_STRING": "worker:copy"}  # fmt: skip


def _render_flow_run_job(job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job the worker would create: Prefect's own templating of the pool's template
    with its variable defaults, the deployment's job variables, and what the worker fills
    in per flow run (name, command, labels, env). The env goes where prefect-kubernetes'
    KubernetesWorkerJobConfiguration._populate_env_in_manifest puts it: in place of a
    `{{ env }}` placeholder, or before the entries of a container env the template spells
    out (as this one does, for its Secret references)."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    values.update(job_variables)
    env = {**WORKER_ENV, **(job_variables.get("env") or {})}
    values.update(name="sqz-flow-run", command=["prefect", "flow-run", "execute"],
                  labels={"prefect.io/flow-run-id": "0"}, annotations={}, env=env)  # fmt: skip
    job = apply_values(template["job_configuration"]["job_manifest"], values)
    container = job["spec"]["template"]["spec"]["containers"][0]
    as_list = [{"name": k, "value": v} for k, v in env.items() if v is not None]
    if isinstance(container.get("env"), list):
        container["env"] = [*as_list, *container["env"]]
    else:
        container["env"] = as_list

    def drop_none(node: Any) -> Any:  # unset optional fields (e.g. serviceAccountName)
        if isinstance(node, dict):
            return {k: drop_none(v) for k, v in node.items() if v is not None}
        return [drop_none(v) for v in node] if isinstance(node, list) else node

    return drop_none(job)


def test_base_job_template_passes_prefects_validation_and_renders_a_valid_job():
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    validate_base_job_template(template)  # what the server runs on `prefect work-pool create`
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    jsonschema.Draft202012Validator(variables).validate(defaults)
    assert _contains(template["job_configuration"]["job_manifest"], PREFECT_REQUIRED_MANIFEST)

    deployment = _k8s_deployment()
    # "{{ $VAR }}" values are filled from the environment by `prefect deploy` (and dropped
    # when unset, so the pool's template default applies): check the defaults here.
    job_variables = {k: v for k, v in deployment["work_pool"].get("job_variables", {}).items()
                     if not (isinstance(v, str) and v.startswith("{{ $"))}  # fmt: skip
    jsonschema.Draft202012Validator(variables).validate({**defaults, **job_variables})
    job = _render_flow_run_job(job_variables)
    pod = job["spec"]["template"]["spec"]
    # Prefect insists on these two in the pod spec, where Kubernetes has no such fields
    # (the API server drops them with a warning); everything else must be valid.
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    # Same Secret, dataset volume and mount point as the Ray pods the flow drives.
    container = pod["containers"][0]
    head = _one("RayCluster", "sqz")["spec"]["headGroupSpec"]["template"]["spec"]
    assert container["envFrom"] == head["containers"][0]["envFrom"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == next(v for v in head["volumes"] if v["name"] == "imagenet")["persistentVolumeClaim"]
    assert container["volumeMounts"][0] == next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "imagenet")
    assert job["metadata"]["namespace"] == "sqz" and container["image"] == head["containers"][0]["image"]


def test_worker_values_match_the_chart_schema_and_the_pool():
    schema = _load_schema("prefect-worker.values.schema.json")
    values = yaml.safe_load(WORKER_VALUES.read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    broken = copy.deepcopy(values)
    broken["worker"]["config"]["workpool"] = broken["worker"]["config"].pop("workPool")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)
    assert values["worker"]["config"] == {**values["worker"]["config"], "type": "kubernetes", "workPool": "sqz-k8s"}
    prefect_version = re.search(r"^prefect-version: (\S+)", (ROOT / "prefect.yaml").read_text(), flags=re.M).group(1)
    assert values["worker"]["image"]["prefectTag"].startswith(prefect_version + "-")


def test_k8s_deployment_reaches_the_ray_cluster_and_the_bucket():
    deployment = _k8s_deployment()
    cluster = _one("RayCluster", "sqz")
    client_port = next(p["containerPort"] for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"] if p["name"] == "client")
    # KubeRay names the head Service <cluster>-head-svc.
    expected = f"ray://{cluster['metadata']['name']}-head-svc.{cluster['metadata']['namespace']}.svc.cluster.local:{client_port}"
    assert deployment["parameters"]["ray_address"] == expected
    assert urlparse(deployment["parameters"]["config"]["storage_url"]).netloc == _bucket()
    assert deployment["entrypoint"] == "flows/pipeline_flow.py:squeeze_pipeline"
    assert any(s.get("cron") for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
               if d["work_pool"]["name"] == "sqz-k8s" for s in d.get("schedules", []))  # the weekly re-sweep


# ---------------------------------------------------------------- KubeRay jobs vs cluster


def _bucket() -> str:
    env = {e["name"]: e.get("value") for e in _one("Job", "minio-create-bucket")["spec"]["template"]["spec"]["containers"][0]["env"]}
    compose = yaml.safe_load(COMPOSE.read_text())["services"]["minio-init"]["environment"]
    assert env["BUCKET"] == compose["BUCKET"]
    return env["BUCKET"]


def _flags(entrypoint: str) -> tuple[list[str], dict[str, str]]:
    words = shlex.split(entrypoint)
    flags = {words[i]: words[i + 1] for i in range(2, len(words) - 1, 2)}
    assert len(words) % 2 == 0 and all(k.startswith("--") for k in flags), entrypoint
    return words, flags


def _quantity(text: str | int) -> float:
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name", ["sqz-train-imagenet", "sqz-sweep-imagenet"])
def test_rayjobs_fit_the_cluster_they_select(name):
    job = _one("RayJob", name)
    cluster = _one("RayCluster", job["spec"]["clusterSelector"]["ray.io/cluster"])
    words, flags = _flags(job["spec"]["entrypoint"])
    assert words[0] == "sqz" and flags["--ray-address"] == "auto"  # the driver runs inside the cluster
    assert urlparse(flags["--storage"]).netloc == _bucket()
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus, cpus = int(limits["nvidia.com/gpu"]), _quantity(limits["cpu"])
    per_unit = {"train": ("--workers", "--gpus-per-worker", "--cpus-per-worker"),
                "sweep": ("--max-concurrent", "--gpus-per-trial", "--cpus-per-trial")}[words[1]]  # fmt: skip
    count, unit_gpus, unit_cpus = int(flags[per_unit[0]]), float(flags[per_unit[1]]), float(flags[per_unit[2]])
    # Each worker (trial) fits one GPU pod, and all of them fit the group's upper bound.
    assert unit_gpus <= gpus and unit_cpus <= cpus
    assert count * unit_gpus <= gpu["maxReplicas"] * gpus
    # The dataset path is where every Ray pod mounts the dataset volume.
    for pod in _pod_specs(cluster):
        assert any(m["mountPath"] == flags["--data"] for m in pod["containers"][0]["volumeMounts"])
    if words[1] == "sweep":
        train = _flags(_one("RayJob", "sqz-train-imagenet")["spec"]["entrypoint"])[1]
        assert flags["--checkpoint"] == f"{train['--storage']}/{train['--run-id']}"


@pytest.mark.parametrize("name", ["sqz-train-imagenet", "sqz-sweep-imagenet"])
def test_rayjob_entrypoints_parse_with_the_sqz_command(name):
    """Once `sqz train` / `sqz sweep` are registered, their own parser must accept the
    entrypoints (catches a renamed or removed option)."""
    from sqz import cli

    words, _ = _flags(_one("RayJob", name)["spec"]["entrypoint"])
    parser = cli._build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if words[1] not in subcommands:
        pytest.skip(f"`sqz {words[1]}` is not registered in this checkout")
    parser.parse_args(words[1:])


def test_network_policy_selects_the_ray_pods():
    policy = _one("NetworkPolicy", "ray-ingress")
    # KubeRay labels every pod of a cluster ray.io/cluster=<name>.
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": _one("RayCluster", "sqz")["metadata"]["name"]}


def test_cluster_autoscales_with_gpu_and_cpu_groups():
    spec = _one("RayCluster", "sqz")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"] == resources["limits"]  # Guaranteed QoS: no eviction mid-epoch
    assert "nvidia.com/gpu" in groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


# ---------------------------------------------------------------- access: Ray token, Prefect basic auth

RAY_AUTH_SECRET = ("sqz-ray-auth", "auth_token")
PREFECT_AUTH_SECRET = ("sqz-prefect-auth", "auth-string")  # the key the prefect-server chart reads


def _effective_env(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A container's env as the kubelet applies it: of repeated names, the last wins."""
    return {entry["name"]: entry for entry in env}


def _secret_ref(entry: dict[str, Any] | None) -> tuple[str, str] | None:
    """(Secret, key) when ``entry`` takes its value from a Secret and has no literal value."""
    if not entry or "value" in entry:
        return None
    ref = entry.get("valueFrom", {}).get("secretKeyRef", {})
    return (ref.get("name"), ref.get("key")) if ref else None


def _assert_ray_token_env(env: list[dict[str, Any]], where: str) -> None:
    effective = _effective_env(env)
    assert effective.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    assert _secret_ref(effective.get("RAY_AUTH_TOKEN")) == RAY_AUTH_SECRET, where


def test_every_ray_container_authenticates_with_the_token_from_a_secret():
    """Token auth must be on everywhere or nowhere: a node or client without it is refused
    by the others. Head and every worker group (KubeRay copies the worker container's env
    into its wait-gcs-ready init container), the autoscaler sidecar (a GCS client), and
    the RayJob submitters (`ray job submit` to the dashboard's job API)."""
    cluster = _one("RayCluster", "sqz")
    pods = {"head": cluster["spec"]["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]})
    assert set(pods) == {"head", "cpu", "gpu"}
    for group, pod in pods.items():
        for container in pod["containers"]:
            _assert_ray_token_env(container.get("env", []), f"{group}/{container['name']}")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    _assert_ray_token_env(cluster["spec"]["autoscalerOptions"].get("env", []), "autoscaler")
    for job in _of_kind("RayJob"):
        for container in job["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            _assert_ray_token_env(container.get("env", []), f"{job['metadata']['name']}/{container['name']}")
    # The check fails where it should: a worker group without the token, a literal token.
    broken = copy.deepcopy(cluster["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"])
    with pytest.raises(AssertionError):
        _assert_ray_token_env([e for e in broken if e["name"] != "RAY_AUTH_TOKEN"], "gpu")
    with pytest.raises(AssertionError):
        _assert_ray_token_env([*broken, {"name": "RAY_AUTH_TOKEN", "value": "abc"}], "gpu")


def _compose_services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _required_var(value: Any) -> str:
    """NAME of a ``${NAME:?message}`` value (no default possible), else an AssertionError."""
    assert isinstance(value, str) and REQUIRED_VAR.match(value), value
    return re.match(r"^\$\{(\w+):", value).group(1)


def test_compose_ray_head_and_its_clients_use_the_token():
    services = _compose_services()
    head, worker = services["ray-head"]["environment"], services["prefect-worker"]["environment"]
    for env in (head, worker):  # the worker's flow runs connect with ray://ray-head:10001
        assert env["RAY_AUTH_MODE"] == "token"
    assert _required_var(head["RAY_AUTH_TOKEN"]) == _required_var(worker["RAY_AUTH_TOKEN"]) == "SQZ_RAY_AUTH_TOKEN"
    # The healthcheck runs inside the head's container, so with its RAY_AUTH_* variables.
    assert services["ray-head"]["healthcheck"]["test"] == ["CMD", "ray", "status"]
    assert "SQZ_RAY_AUTH_TOKEN=" in ENV_EXAMPLE.read_text().splitlines()


def test_compose_prefect_server_and_worker_use_basic_auth():
    services = _compose_services()
    server, worker = services["prefect-server"]["environment"], services["prefect-worker"]["environment"]
    assert _required_var(server["PREFECT_SERVER_API_AUTH_STRING"]) == "SQZ_PREFECT_AUTH_STRING"
    assert _required_var(worker["PREFECT_API_AUTH_STRING"]) == "SQZ_PREFECT_AUTH_STRING"
    assert worker["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert "SQZ_PREFECT_AUTH_STRING=" in ENV_EXAMPLE.read_text().splitlines()


def test_prefect_server_healthcheck_path_is_open_under_basic_auth():
    """The compose healthcheck sends no credentials: Prefect's own API app, with basic auth
    on, must answer its path, and refuse the rest of the API without the string."""
    import asyncio
    import base64

    import httpx
    from prefect.server.api.server import create_api_app
    from prefect.settings import PREFECT_SERVER_API_AUTH_STRING, temporary_settings

    probe = " ".join(_compose_services()["prefect-server"]["healthcheck"]["test"])
    url = urlparse(re.search(r"http://[^'\" ]+", probe).group(0))
    assert url.path.startswith("/api/") and "Authorization" not in probe
    api_path = url.path.removeprefix("/api")  # the API app is mounted at /api

    async def statuses() -> dict[str, int]:
        with temporary_settings({PREFECT_SERVER_API_AUTH_STRING: "admin:pw"}):
            app = create_api_app(ignore_cache=True)
        basic = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return {"probe": (await client.get(api_path)).status_code,
                    "api without": (await client.get("/version")).status_code,
                    "api with": (await client.get("/version", headers=basic)).status_code}  # fmt: skip

    assert asyncio.run(statuses()) == {"probe": 200, "api without": 401, "api with": 200}


def test_flow_run_jobs_take_prefect_and_ray_credentials_from_secrets():
    deployment = _k8s_deployment()
    job_variables = {k: v for k, v in deployment["work_pool"].get("job_variables", {}).items()
                     if not (isinstance(v, str) and v.startswith("{{ $"))}  # fmt: skip
    container = _render_flow_run_job(job_variables)["spec"]["template"]["spec"]["containers"][0]
    env = _effective_env(container["env"])
    # prefect.yaml drops the worker's literal copy of its own auth string (null in the
    # deployment's env), so the Job holds it only as a reference to the Secret.
    assert [e for e in container["env"] if e["name"] == "PREFECT_API_AUTH_STRING" and "value" in e] == []
    assert _secret_ref(env["PREFECT_API_AUTH_STRING"]) == PREFECT_AUTH_SECRET
    _assert_ray_token_env(container["env"], "flow-run Job")
    # The same Secrets as the worker (Prefect) and the Ray head (the cluster ray:// reaches).
    head = _one("RayCluster", "sqz")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _secret_ref(env["RAY_AUTH_TOKEN"]) == _secret_ref(_effective_env(head["env"])["RAY_AUTH_TOKEN"])
    # The Secret names are pool variables, so a deployment can point elsewhere.
    moved = _render_flow_run_job({**job_variables, "ray_auth_secret_name": "other-ray", "prefect_auth_secret_name": "other-prefect"})
    moved_env = _effective_env(moved["spec"]["template"]["spec"]["containers"][0]["env"])
    assert _secret_ref(moved_env["RAY_AUTH_TOKEN"]) == ("other-ray", RAY_AUTH_SECRET[1])
    assert _secret_ref(moved_env["PREFECT_API_AUTH_STRING"]) == ("other-prefect", PREFECT_AUTH_SECRET[1])


def test_worker_takes_the_auth_string_from_a_secret():
    schema = _load_schema("prefect-worker.values.schema.json")
    # This chart version has no auth field of its own; with one, use it instead.
    assert not {"basicAuth", "selfHostedServerApiConfig"} & set(schema["properties"]["worker"]["properties"])
    values = yaml.safe_load(WORKER_VALUES.read_text())
    env = _effective_env(values["worker"]["extraEnvVars"])
    assert _secret_ref(env.get("PREFECT_API_AUTH_STRING")) == PREFECT_AUTH_SECRET
    assert values["worker"]["apiConfig"] == "server"  # basic auth is a self-hosted server's
    literal = copy.deepcopy(values)
    literal["worker"]["extraEnvVars"] = [{"name": "PREFECT_API_AUTH_STRING", "value": "admin:pw"}]
    jsonschema.Draft7Validator(schema).validate(literal)  # the schema would take it...
    assert _literal_secret_findings(Path("values.yaml"), yaml.safe_dump(literal))  # ...the scanner not


def test_readme_creates_every_secret_with_the_keys_read_from_it():
    """Step 2 makes each Secret the manifests, the pool's template, the worker and the
    Prefect server read, with every key they read; the server's --set names the worker's."""
    text = README.read_text().replace("\\\n", " ")
    created: dict[str, set[str]] = {}
    for name, rest in re.findall(r"kubectl -n sqz create secret generic (\S+)(.*)$", text, flags=re.M):
        created[name] = set(re.findall(r"--from-literal=([\w.-]+)=", rest))
    read: set[tuple[str, str | None]] = set()
    for _, doc in K8S_DOCS:
        for node in _walk(doc):
            if isinstance(node, dict) and "secretKeyRef" in node:
                read.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if isinstance(node, dict) and "secretRef" in node:
                read.add((node["secretRef"]["name"], None))
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    for node in _walk(template["job_configuration"]["job_manifest"]):
        if isinstance(node, dict) and ("secretKeyRef" in node or "secretRef" in node):
            ref = node.get("secretKeyRef") or node["secretRef"]
            name = re.fullmatch(r"\{\{ (\w+) \}\}", ref["name"])
            read.add((defaults[name.group(1)] if name else ref["name"], ref.get("key")))
    for entry in yaml.safe_load(WORKER_VALUES.read_text())["worker"]["extraEnvVars"]:
        if ref := _secret_ref(entry):
            read.add(ref)
    server_secret = re.search(r"--set server\.basicAuth\.existingSecret=(\S+)", text).group(1)
    assert "--set server.basicAuth.enabled=true" in text
    read.add((server_secret, PREFECT_AUTH_SECRET[1]))  # the chart reads key auth-string
    assert {RAY_AUTH_SECRET, PREFECT_AUTH_SECRET, ("sqz-s3", None)} <= read
    missing = {(name, key) for name, key in read if name not in created or (key and key not in created[name])}
    assert missing == set()


# ---------------------------------------------------------------- README


def _what_to_change() -> str:
    text = README.read_text()
    return text[text.index("## What to change for your cluster"):]


def test_readme_lists_every_value_a_user_must_change():
    section = _what_to_change()
    cluster = _one("RayCluster", "sqz")
    values = yaml.safe_load(WORKER_VALUES.read_text())
    must_mention = {
        "image registry": {urlparse("//" + img).netloc for _, doc in K8S_DOCS for node in _walk(doc)
                           if isinstance(node, dict) and isinstance(node.get("image"), str)
                           for img in [node["image"]] if img.startswith("registry.")},
        "namespace": {"sqz"},
        "Secret names": {ref for _, doc in K8S_DOCS for node in _walk(doc) if isinstance(node, dict)
                         for ref in [node.get("secretKeyRef", node.get("secretRef", {})).get("name")] if ref}
                        | {v["default"] for k, v in json.loads(BASE_JOB_TEMPLATE.read_text())["variables"]["properties"].items()
                           if k.endswith("secret_name")}
                        | {ref[0] for entry in values["worker"].get("extraEnvVars", []) for ref in [_secret_ref(entry)] if ref},
        "bucket": {_bucket()},
        "dataset volume": {_one("PersistentVolumeClaim", "imagenet")["spec"]["storageClassName"], "imagenet"},
        "GPU counts": {f"maxReplicas: {g['maxReplicas']}" for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"},
        "Prefect API URL": {values["worker"]["serverApiConfig"]["apiUrl"]},
        "work pool": {values["worker"]["config"]["workPool"]},
        "ray:// address": {_k8s_deployment()["parameters"]["ray_address"]},
        "rayVersion": {cluster["spec"]["rayVersion"]},
        "S3 endpoint": {"AWS_ENDPOINT_URL_S3"},
        "KubeRay operator namespace": {sel["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                                       for rule in _one("NetworkPolicy", "ray-ingress")["spec"]["ingress"]
                                       for sel in rule["from"] if "namespaceSelector" in sel},
    }  # fmt: skip
    missing = {what: sorted(v for v in wanted if v not in section) for what, wanted in must_mention.items()}
    assert {k: v for k, v in missing.items() if v} == {}
    assert all(must_mention.values())


def test_readme_flop_figure_is_the_models():
    """The sizing estimate quotes SqueezeNet v1.0's forward cost; it must be what
    sqz.models' squeezenet1_0 costs at the released recipe's 227x227 crops."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sqz.models import build_model

    model = build_model("squeezenet1_0").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 227, 227))
    gflops = counter.get_total_flops() / 1e9
    assert f"{gflops:.2f} GFLOPs" in README.read_text()
