"""KubeRay manifests checked against schemas, not field by field.

    .venv/bin/python -m pytest tests/unit/test_kuberay_crds.py -q
    KUBERAY_CRD_DIR=/path/to/crds .venv/bin/python -m pytest tests/unit/test_kuberay_crds.py -q

Two layers, both strict (an unknown field is an error, as with `kubectl apply`, whose default
server-side field validation is Strict):

- Every pod template (head, each worker group, a RayJob's submitter) and every non-KubeRay
  document against Kubernetes' own schemas, shipped by the `kubernetes-validate` package.
  Always runs, offline.
- Each whole manifest against the openAPIV3Schema of its KubeRay CRD (RayCluster, RayJob,
  RayService), which covers the Ray fields too. No PyPI or npm package ships these CRDs, so
  they are read from KUBERAY_CRD_DIR: a folder holding ray.io_rayclusters.yaml,
  ray.io_rayjobs.yaml and ray.io_rayservices.yaml, such as the crds/ folder of the
  kuberay-operator Helm chart (`helm pull kuberay/kuberay-operator --version 1.6.2 --untar`)
  or ray-operator/config/crd/bases/ of a KubeRay checkout. Without it those tests skip.
  The CEL rules (x-kubernetes-validations) and string formats of a CRD are not evaluated.

The conversion of a CRD's structural schema to JSON Schema is our own code, so it is tested
on a small schema below whether or not the CRDs are present, and each layer is fed broken
manifests to show that it fails.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "configs" / "kuberay"
MANIFESTS = sorted(p.name for p in KUBERAY.glob("*.yaml"))
CRD_DIR_ENV = "KUBERAY_CRD_DIR"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
NO_CRDS = (
    f"KubeRay CRD schemas not found: no PyPI or npm package ships them; set {CRD_DIR_ENV} to a "
    f"folder with {', '.join(CRD_FILES.values())} (e.g. the crds/ folder of the "
    "kuberay-operator Helm chart, KubeRay >= 1.6)"
)
# The oldest and the newest Kubernetes whose schemas the installed kubernetes-validate ships:
# a pod template field too new for older clusters, or one since removed, fails one of them.
K8S_VERSIONS = sorted(
    {kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version()}
)
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def documents(name: str) -> list[dict]:
    return list(yaml.load_all((KUBERAY / name).read_text(), Loader=Loader))


def manifest(name: str) -> dict:
    (doc,) = documents(name)
    return doc


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        doc["kind"], spec
    )


def pod_templates(doc: dict) -> dict[str, dict]:
    """Every pod template of a KubeRay manifest, by its path in the manifest."""
    prefix = {"RayJob": "spec.rayClusterSpec", "RayService": "spec.rayClusterConfig"}.get(
        doc["kind"], "spec"
    )
    spec = cluster_spec(doc) or {}
    found = {}
    if "headGroupSpec" in spec:
        found[f"{prefix}.headGroupSpec.template"] = spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        found[f"{prefix}.workerGroupSpecs[{i}].template"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        found["spec.submitterPodTemplate"] = doc["spec"]["submitterPodTemplate"]
    return found


def check_pod_template(template: dict, version: str) -> None:
    """Kubernetes' PodTemplateSpec schema (strict), by way of a v1 PodTemplate object."""
    kubernetes_validate.validate(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": template,
        },
        version,
        strict=True,
    )


def structural_to_jsonschema(schema: dict) -> dict:
    """A CRD's structural (OpenAPI v3) schema as JSON Schema, unknown fields rejected.

    `nullable` becomes a null type; an object with `properties` and neither
    `additionalProperties` (a map) nor `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false`. int-or-string fields already carry an anyOf of both types.
    Only sub-schemas are walked, so a field that happens to be called `nullable` or
    `properties` stays a field.
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = structural_to_jsonschema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [structural_to_jsonschema(s) for s in out[key]]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crd_validators(folder: Path) -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) -> validator, for every served version of every CRD file."""
    validators = {}
    for kind, filename in CRD_FILES.items():
        crd = yaml.load((folder / filename).read_text(), Loader=Loader)
        assert crd["kind"] == "CustomResourceDefinition", filename
        assert crd["spec"]["names"]["kind"] == kind, filename
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
                key = (f"{crd['spec']['group']}/{version['name']}", kind)
                validators[key] = jsonschema.Draft4Validator(schema)
    return validators


def crd_problems(validators: dict, doc: dict) -> list[str]:
    validator = validators.get((doc["apiVersion"], doc["kind"]))
    if validator is None:
        return [f"no CRD schema for {doc['apiVersion']} {doc['kind']}"]
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.fixture(scope="module")
def crd_validators():
    value = os.environ.get(CRD_DIR_ENV)
    if not value:
        pytest.skip(NO_CRDS)
    folder = Path(value)
    missing = [f for f in CRD_FILES.values() if not (folder / f).is_file()]
    # Set but wrong is a mistake to report, not a reason to skip.
    assert not missing, f"{CRD_DIR_ENV}={value} lacks {missing}"
    return load_crd_validators(folder)


# --- Kubernetes' own schemas (kubernetes-validate): always -----------------------------------


def test_the_manifests_are_there():
    assert {"raycluster.yaml", "rayjob-sweep.yaml", "rayservice.yaml"} <= set(MANIFESTS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_every_pod_template_passes_the_kubernetes_schema(name, version):
    doc = manifest(name)
    templates = pod_templates(doc)
    spec = cluster_spec(doc)
    assert len(templates) >= 1 + len(spec.get("workerGroupSpecs", []))
    for path, template in templates.items():
        try:
            check_pod_template(template, version)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.absolute_path))
            pytest.fail(f"{name} {path} (Kubernetes {version}): {where}: {e.message}")


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_document_is_a_kuberay_kind_or_passes_the_kubernetes_schema(name):
    for doc in documents(name):
        if doc["apiVersion"].startswith("ray.io/"):
            assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in CRD_FILES, name
        else:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def head_template() -> dict:
    return copy.deepcopy(manifest("raycluster.yaml")["spec"]["headGroupSpec"]["template"])


def broken_templates() -> dict[str, dict]:
    cases = {}
    t = head_template()
    t["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    cases["containerPort as a string"] = t
    t = head_template()
    t["spec"]["containers"][0]["volumeMount"] = t["spec"]["containers"][0].pop("volumeMounts")
    cases["misspelt volumeMounts"] = t
    t = head_template()
    del t["spec"]["containers"][0]["name"]
    cases["container without a name"] = t
    t = head_template()
    t["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["optional"] = "yes"
    cases["secretKeyRef.optional not a boolean"] = t
    t = head_template()
    t["spec"]["volumes"] = {"dshm": {"emptyDir": {}}}
    cases["volumes as a map"] = t
    return cases


@pytest.mark.parametrize("case", sorted(broken_templates()))
def test_the_kubernetes_schema_flags_a_broken_pod_template(case):
    check_pod_template(head_template(), K8S_VERSIONS[-1])  # the unbroken one passes
    with pytest.raises(kubernetes_validate.ValidationError):
        check_pod_template(broken_templates()[case], K8S_VERSIONS[-1])


def test_a_secret_document_would_be_validated_too():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque"}
    kubernetes_validate.validate(secret, K8S_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**secret, "stringData": ["a"]}, K8S_VERSIONS[-1], strict=True)


# --- the structural-schema conversion: always ------------------------------------------------

TOY_CRD_SCHEMA = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "replicas": {"type": "integer", "format": "int32", "nullable": True},
                "cpu": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "pattern": "^[0-9]+m?$",
                    "x-kubernetes-int-or-string": True,
                },
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                # Fields named like schema keywords.
                "properties": {
                    "type": "object",
                    "properties": {"nullable": {"type": "string"}, "type": {"type": "string"}},
                },
                "ports": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"port": {"type": "integer"}}},
                },
            },
        }
    },
}


def test_structural_schema_conversion_is_strict_where_kubernetes_is():
    validator = jsonschema.Draft4Validator(structural_to_jsonschema(TOY_CRD_SCHEMA))
    good = {
        "spec": {
            "name": "x",
            "replicas": None,
            "cpu": "500m",
            "params": {"any-key": "v"},
            "free": {"a": "b", "unknown": 1},
            "properties": {"nullable": "n", "type": "t"},
            "ports": [{"port": 1}],
        }
    }
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({"spec": {"name": "x", "cpu": 2}})) == []
    bad = {
        "unknown field": {"spec": {"name": "x", "replicaz": 1}},
        "wrong type": {"spec": {"name": "x", "replicas": "1"}},
        "missing required": {"spec": {}},
        "int-or-string pattern": {"spec": {"name": "x", "cpu": "lots"}},
        "map value type": {"spec": {"name": "x", "params": {"k": 1}}},
        "unknown top-level field": {"spec": {"name": "x"}, "extra": {}},
        "unknown field in a field named properties": {
            "spec": {"name": "x", "properties": {"x": ""}}
        },
        "field named type of the wrong type": {"spec": {"name": "x", "properties": {"type": 1}}},
        "unknown field in an array item": {"spec": {"name": "x", "ports": [{"prot": 1}]}},
    }
    for case, doc in bad.items():
        assert list(validator.iter_errors(doc)), case


# --- the KubeRay CRDs: when KUBERAY_CRD_DIR is set ------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_its_kuberay_crd(crd_validators, name):
    for doc in documents(name):
        assert crd_problems(crd_validators, doc) == [], name


def broken_manifests() -> dict[str, tuple[str, dict]]:
    """case -> (path the error must name, broken manifest)."""
    cases = {}
    m = manifest("raycluster.yaml")
    m["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    cases["maxReplicas as a string"] = ("spec.workerGroupSpecs.0.maxReplicas", m)
    m = manifest("raycluster.yaml")
    m["spec"]["authOptions"]["mode"] = "tokens"
    cases["authOptions.mode outside its enum"] = ("spec.authOptions.mode", m)
    m = manifest("raycluster.yaml")
    m["spec"]["headGroupSpec"]["serviceTyp"] = m["spec"]["headGroupSpec"].pop("serviceType")
    cases["misspelt serviceType"] = ("spec.headGroupSpec", m)
    m = manifest("raycluster.yaml")
    del m["spec"]["workerGroupSpecs"][0]["groupName"]
    cases["worker group without groupName"] = ("spec.workerGroupSpecs.0", m)
    m = manifest("rayjob-sweep.yaml")
    m["spec"]["shutdownAfterJobFinishes"] = "true"
    cases["RayJob boolean as a string"] = ("spec.shutdownAfterJobFinishes", m)
    m = manifest("rayjob-sweep.yaml")
    containers = m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    containers[0]["ports"][0]["containerPort"] = "6379"
    cases["RayJob pod template port as a string"] = (
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.ports.0.containerPort",
        m,
    )
    m = manifest("rayservice.yaml")
    m["spec"]["serveConfigV2"] = yaml.safe_load(m["spec"]["serveConfigV2"])
    cases["serveConfigV2 as a mapping, not a string"] = ("spec.serveConfigV2", m)
    m = manifest("rayservice.yaml")
    m["spec"]["rayClusterConfig"]["enableInTreeAutoscaler"] = True
    cases["RayService misspelt cluster field"] = ("spec.rayClusterConfig", m)
    return cases


@pytest.mark.parametrize("case", sorted(broken_manifests()))
def test_the_kuberay_crd_flags_a_broken_manifest(crd_validators, case):
    path, doc = broken_manifests()[case]
    problems = crd_problems(crd_validators, doc)
    assert problems, case
    assert any(p.startswith(f"{path}:") for p in problems), problems
