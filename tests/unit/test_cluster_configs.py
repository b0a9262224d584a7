"""Offline checks of cluster/configs/: each file against Ray's own schemas, plus our rules.

    .venv/bin/python -m pytest tests/test_cluster_configs.py -q

No Ray starts and nothing is reached over the network. The AWS launcher config goes through
the autoscaler's JSON schema and `prepare_config`/`validate_config` (what `ray up` runs before
it calls AWS); the RayService's serveConfigV2 through `ServeDeploySchema` (what Serve checks a
deploy with) and build_app's own `ServeArgs`; runtime envs through `RuntimeEnv` and Ray's own
upload-exclude matcher. The ray package has no KubeRay CRD schema, so the manifests are
checked field by field for what matters here: token auth, secrets only via secretKeyRef,
GPUs, and agreement with the project (Ray version, dependencies, env vars, metrics).
The checkers are plain functions, fed broken inputs at the bottom to show they can fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "cluster" / "configs"
KUBERAY = CONFIGS / "kuberay"
KIND_OF = {"raycluster.yaml": "RayCluster", "rayjob-sweep.yaml": "RayJob",
           "rayservice.yaml": "RayService"}  # fmt: skip

SECRET_VARS = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN",
    "RAYLANE_API_KEY",
}  # fmt: skip
# name -> (type, tag keys), as serve/ and workloads/ export them with ray.util.metrics
# (checked against their source below).
METRICS = {
    "raylane_serve_requests_total": ("counter", {"model", "version", "code"}),
    "raylane_serve_request_latency_ms": ("histogram", {"model", "version"}),
    "raylane_serve_batch_size": ("histogram", {"model"}),
    "raylane_serve_model_version": ("gauge", {"model", "alias"}),
    "raylane_rollout_weight": ("gauge", {"model", "alias", "candidate"}),
    "raylane_serve_model_loads_total": ("counter", {"model", "version"}),
    "raylane_serve_model_evictions_total": ("counter", {"model"}),
    "raylane_train_epoch": ("gauge", {"run"}),
    "raylane_train_loss": ("gauge", {"run", "split"}),
    "raylane_train_val_accuracy": ("gauge", {"run"}),
    "raylane_train_samples_per_second": ("gauge", {"run"}),
}
SERVE_ARGS = {
    "model", "storage", "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests",
    "num_cpus", "num_gpus", "api_key_env",
}  # fmt: skip


def load(path: Path):
    return yaml.safe_load(path.read_text())


def kuberay(name: str) -> dict:
    return load(KUBERAY / name)


def cluster_spec(manifest: dict) -> dict:
    """The RayCluster spec inside any of the three kinds."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    spec = manifest["spec"]
    return spec[key[manifest["kind"]]] if key[manifest["kind"]] else spec


def pod_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- checkers: each returns a list of problems, empty when all is well ----------------------


def secret_problems(obj, where: str = "") -> list[str]:
    """Literal secret values anywhere in a parsed config, embedded YAML strings included."""
    found = []
    if isinstance(obj, dict):
        name = obj.get("name")
        if name in SECRET_VARS and (
            "value" in obj or "secretKeyRef" not in obj.get("valueFrom", {})
        ):
            found.append(f"{where}: {name} must come from valueFrom.secretKeyRef")
        for key, value in obj.items():
            if key in SECRET_VARS:
                found.append(f"{where}.{key}: a literal secret variable")
            if key in ("runtimeEnvYAML", "serveConfigV2") and isinstance(value, str):
                value = yaml.safe_load(value)
            found += secret_problems(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found += secret_problems(item, f"{where}[{i}]")
    elif isinstance(obj, str):
        # `--env RAY_AUTH_TOKEN=abc` in a command; `=$(...)`/`="$(...)"` reads it at run time.
        names = "|".join(SECRET_VARS)
        for match in re.finditer(rf"\b({names})=(?![\"']?\$)\S", obj):
            found.append(f"{where}: {match.group(1)} set inline")
    if isinstance(obj, dict) and obj.get("kind") == "Secret":
        found.append(f"{where}: a Secret manifest (create Secrets with kubectl, not from a file)")
    return found


def text_secret_problems(text: str) -> list[str]:
    """What a secret looks like in raw text, comments included."""
    found = [f"AWS access key id {m}" for m in re.findall(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", text)]
    names = "|".join([*SECRET_VARS, "auth_token", "api_key"])
    for match in re.finditer(rf"\b({names})\s*[=:]\s*[\"']?([A-Za-z0-9/+_-]{{12,}})", text):
        found.append(f"{match.group(1)} = {match.group(2)[:4]}...")
    return found


def runtime_env_problems(env: dict) -> list[str]:
    """A runtime_env Ray accepts, with no AWS_* or secret variable in it."""
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**env)
    except Exception as e:  # RuntimeEnv raises several types for several mistakes
        return [f"RuntimeEnv rejects it: {e}"]
    bad = [k for k in env.get("env_vars", {}) if k.startswith("AWS_") or k in SECRET_VARS]
    return [f"env_vars.{k} belongs to the node, not the runtime_env" for k in bad]


def serve_config_problems(config: dict) -> list[str]:
    """ServeDeploySchema, plus what it lets through: it keeps deployment entries and
    autoscaling_config as loose dicts, so a misspelt key or min > max passes it silently."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as e:
        return [f"ServeDeploySchema rejects it: {e}"]
    found = []
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            unknown = set(deployment) - set(DeploymentSchema.model_fields)
            scaling = deployment.get("autoscaling_config") or {}
            unknown |= set(scaling) - set(AutoscalingConfig.model_fields)
            found += [f"{deployment['name']}: unknown field {k!r}" for k in sorted(unknown)]
            try:
                AutoscalingConfig(**scaling)
            except ValueError as e:
                found.append(f"{deployment['name']}: {e}")
    return found


def series_of(name: str) -> set[str]:
    kind, _ = METRICS[name]
    suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
    return {f"ray_{name}{s}" for s in suffixes}


SERIES = {s: name for name in METRICS for s in series_of(name)}


def promql_problems(expr: str) -> list[str]:
    """Unknown raylane series, labels a metric does not carry, quantiles without buckets."""
    found, used = [], set()
    for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if "raylane_" in token:
            if token in SERIES:
                used.add(token)
            else:
                found.append(f"unknown series {token!r}")
    tags = set().union(*(METRICS[SERIES[s]][1] for s in used)) if used else set()
    if any(s.endswith("_bucket") for s in used):
        tags.add("le")
    for series, matchers in re.findall(r"(ray_raylane_\w+)\{([^}]*)\}", expr):
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        if series in SERIES and not labels <= METRICS[SERIES[series]][1]:
            found.append(f"{series} has no label(s) {sorted(labels - METRICS[SERIES[series]][1])}")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels = {label.strip() for label in group.split(",") if label.strip()}
        if not labels <= tags:
            found.append(f"grouping by label(s) {sorted(labels - tags)} that no series here has")
    if "histogram_quantile" in expr and not (
        {s for s in used if s.endswith("_bucket")} and "le" in expr
    ):
        found.append("histogram_quantile needs a _bucket series aggregated by le")
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        found.append("unbalanced brackets")
    return found


def grafana_queries(dashboard: dict) -> list[str]:
    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    variables = dashboard.get("templating", {}).get("list", [])
    return exprs + [v["definition"] for v in variables if v.get("type") == "query"]


# --- the files ------------------------------------------------------------------------------


def test_every_config_file_is_free_of_secrets():
    files = sorted(p for p in CONFIGS.rglob("*") if p.is_file())
    assert len(files) >= 8 and CONFIGS / "aws-gpu-cluster.yaml" in files
    for path in files:
        text = path.read_text()
        assert text_secret_problems(text) == [], path
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                assert secret_problems(doc, path.name) == []
        elif path.suffix == ".json":
            assert secret_problems(json.loads(text), path.name) == []


def aws_config() -> dict:
    return load(CONFIGS / "aws-gpu-cluster.yaml")


def test_aws_cluster_passes_rays_autoscaler_schema_and_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = aws_config()
    jsonschema.validate(config, schema)
    # What `ray up` does before it calls AWS: merge defaults, then validate the result.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_aws_cluster_has_cpu_head_autoscaled_gpu_workers_and_token_auth():
    config = aws_config()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge"
    assert "GPU" not in head["resources"]
    (gpu,) = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu["node_config"]["InstanceType"] == "g5.xlarge"
    assert (gpu["min_workers"], gpu["max_workers"]) == (0, 4)
    assert config["max_workers"] >= gpu["max_workers"]
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py311-gpu")
    # S3 through instance profiles, on every node type; no key anywhere.
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["IamInstanceProfile"]["Name"].startswith("raylane-")
    assert any("-c ~/raylane/constraints.txt ~/raylane" in c for c in config["setup_commands"])

    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for start in (head_start, " ".join(config["worker_start_ray_commands"])):
        assert "RAY_AUTH_MODE=token ray start" in start
    run_options = " ".join(config["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options
    # The token file setup_commands writes is the one RAY_AUTH_TOKEN_PATH names.
    assert "--env RAY_AUTH_TOKEN_PATH=/home/ray/.ray/auth_token" in run_options
    (fetch,) = [c for c in config["setup_commands"] if "secretsmanager" in c]
    assert fetch.endswith("mv ~/.ray/auth_token.tmp ~/.ray/auth_token")
    compile(re.search(r'python -c "(.*?)"', fetch).group(1), "token-fetch", "exec")


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_kuberay_manifest_kind_version_and_auth(name):
    manifest = kuberay(name)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", KIND_OF[name])
    spec = cluster_spec(manifest)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token", "secretName": "raylane-ray-token"}
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    # In-cluster only: the dashboard listens on 0.0.0.0 in the pod, so the Service must not
    # carry it outside.
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for container in pod_containers(spec):
        assert container["image"].startswith(f"rayproject/ray:{ray.__version__}-")
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        expected = {
            "RAY_AUTH_TOKEN": ("raylane-ray-token", "auth_token"),
            "AWS_ACCESS_KEY_ID": ("raylane-s3", "AWS_ACCESS_KEY_ID"),
            "AWS_SECRET_ACCESS_KEY": ("raylane-s3", "AWS_SECRET_ACCESS_KEY"),
        }
        for var, (secret, key) in expected.items():
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (secret, key) and "value" not in env[var]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-sweep.yaml"])
def test_kuberay_gpu_worker_group_requests_one_gpu_and_scales_from_zero(name):
    (group,) = cluster_spec(kuberay(name))["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 4)


def project_requirements() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(
        re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower(): d for d in deps}
    names.pop("ray")  # in the image, at the version the manifests pin
    return {n: (f"{n}=={pins[n]}" if n in pins else spec) for n, spec in names.items()}


def pip_packages(runtime_env: dict) -> dict[str, str]:
    pip = runtime_env["pip"]
    packages = pip["packages"] if isinstance(pip, dict) else pip
    return {re.match(r"[A-Za-z0-9_.-]+", p).group(0).lower(): p for p in packages}


def test_rayjob_runs_the_sweep_with_a_clean_runtime_env_and_the_project_deps():
    from cluster.runtime import JOB_ENV_VARS

    spec = kuberay("rayjob-sweep.yaml")["spec"]
    assert spec["entrypoint"].startswith("python -m tune.sweep --config digits-sweep ")
    assert re.search(
        r"--storage s3://\S+ --register digits --promote production", spec["entrypoint"]
    )
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env_problems(runtime_env) == []
    assert re.fullmatch(r"s3://\S+\.zip", runtime_env["working_dir"])
    assert runtime_env["env_vars"] == JOB_ENV_VARS
    assert pip_packages(runtime_env) == project_requirements()


def serve_config() -> dict:
    return yaml.safe_load(kuberay("rayservice.yaml")["spec"]["serveConfigV2"])


def test_rayservice_serve_config_passes_rays_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    from serve.config import ServeArgs

    assert serve_config_problems(serve_config()) == []
    schema = ServeDeploySchema.model_validate(serve_config())
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("raylane", "/", "serve.app:build_app")
    assert set(app.args) >= SERVE_ARGS
    # build_app's own parser: what the replicas would reject, the test rejects first.
    ServeArgs.parse(app.args)
    assert app.args["model"] == "digits@production" and app.args["storage"].startswith("s3://")
    (deployment,) = app.deployments
    assert deployment.name == "ModelServer"
    scaling = deployment.autoscaling_config
    assert 2 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert runtime_env_problems(app.runtime_env) == []
    assert pip_packages(app.runtime_env) == project_requirements()


def test_rayservice_cluster_fits_its_replicas_and_holds_the_api_key():
    manifest = kuberay("rayservice.yaml")
    (app,) = serve_config()["applications"]
    spec = cluster_spec(manifest)
    (group,) = spec["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    cpus_per_pod = int(container["resources"]["limits"]["cpu"])
    (deployment,) = app["deployments"]
    # Autoscaled to the top, the replicas still find CPUs on the largest worker group.
    assert deployment["autoscaling_config"]["max_replicas"] * app["args"]["num_cpus"] <= (
        group["maxReplicas"] * cpus_per_pod
    )
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for c in pod_containers(spec):
        ref = env_of(c)[app["args"]["api_key_env"]]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "raylane-api-key" and not ref.get("optional", False)


def test_one_storage_location_across_the_kubernetes_manifests():
    storage = serve_config()["applications"][0]["args"]["storage"]
    job = kuberay("rayjob-sweep.yaml")["spec"]
    assert f"--storage {storage} " in job["entrypoint"]
    assert yaml.safe_load(job["runtimeEnvYAML"])["working_dir"].startswith(storage + "/")


def test_serve_config_agrees_with_the_projects_own_serve_config_when_present():
    path = ROOT / "serve" / "config.yaml"
    if not path.exists():
        pytest.skip("serve/config.yaml not written yet")
    ours, theirs = serve_config()["applications"][0], load(path)["applications"][0]
    assert ours["import_path"] == theirs["import_path"]
    names = {d["name"] for d in theirs.get("deployments", [])}
    assert not names or {d["name"] for d in ours["deployments"]} <= names


def test_job_runtime_env_is_accepted_by_ray_and_excludes_local_state():
    from ray._private.runtime_env.packaging import _get_excludes

    from cluster.runtime import JOB_ENV_VARS

    env = load(CONFIGS / "job-runtime-env.yaml")
    assert runtime_env_problems(env) == []
    assert env["env_vars"] == JOB_ENV_VARS
    assert "working_dir" not in env  # `--working-dir .` on the command line provides it
    excluded = _get_excludes(ROOT, env["excludes"])
    # Directories themselves must match, or Ray walks every file under them.
    dropped = [".venv", "artifacts", ".raylane", ".git", "artifacts/d/model.pt", "x/__pycache__"]
    assert [p for p in dropped if not excluded(ROOT / p)] == []
    kept = ["workloads/train.py", "workloads/configs/digits-cnn.yaml", "serve/app.py"]
    assert [p for p in kept if excluded(ROOT / p)] == []


def test_grafana_dashboard_queries_only_the_exported_metrics():
    dashboard = json.loads((CONFIGS / "grafana-dashboard.json").read_text())
    queries = grafana_queries(dashboard)
    for query in queries:
        assert promql_problems(query) == [], query
    referenced = {SERIES[t] for q in queries for t in re.findall(r"ray_raylane_\w+", q)}
    assert referenced == set(METRICS)  # every metric has a panel
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    quantiles = [q for q in queries if "histogram_quantile(0.99" in q]
    assert any("request_latency_ms_bucket" in q for q in quantiles)


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """The ray.util.metrics that serve/ and workloads/ create, read from their source."""
    import ast

    found = {}
    for path in [*ROOT.glob("serve/*.py"), *ROOT.glob("workloads/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            kind = getattr(node.func, "attr", getattr(node.func, "id", ""))
            name = node.args[0]
            if kind in ("Counter", "Gauge", "Histogram") and isinstance(name, ast.Constant):
                tags = next((k.value for k in node.keywords if k.arg == "tag_keys"), None)
                tags = {e.value for e in tags.elts} if isinstance(tags, ast.Tuple) else set()
                found[name.value] = (kind.lower(), tags)
    return found


def test_dashboard_catalogue_is_what_the_code_exports():
    assert exported_metrics() == METRICS


def test_prometheus_scrapes_rays_service_discovery_file():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = load(CONFIGS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    files = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    assert files == [os.path.join("/tmp/ray", PROMETHEUS_SERVICE_DISCOVERY_FILE)]


# --- the checkers catch what they are for -------------------------------------------------


def test_checkers_flag_broken_configs():
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = aws_config()
    broken["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5  # schema: integers only
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    typo = aws_config()
    typo["head_start_ray_command"] = typo.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(typo))

    leaked = kuberay("raycluster.yaml")
    env = leaked["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env[1] = {"name": "RAY_AUTH_TOKEN", "value": "x"}
    assert secret_problems(leaked)
    assert secret_problems({"runtimeEnvYAML": "env_vars: {AWS_SECRET_ACCESS_KEY: abc}"})
    assert secret_problems({"run_options": ["--env RAY_AUTH_TOKEN=0123abcd"]})
    assert not secret_problems({"cmd": 'RAY_AUTH_TOKEN="$(cat token)" ray job submit'})
    assert text_secret_problems("aws_access_key_id = AKIAABCDEFGHIJKLMNOP")
    assert text_secret_problems("auth_token: 9f86d081884c7d659a2feaa0c55ad015")

    assert runtime_env_problems({"env_vars": {"AWS_REGION": "us-east-1"}})
    assert runtime_env_problems({"env_vars": {"N": 1}})  # Ray wants strings

    assert promql_problems("rate(ray_raylane_serve_request_total[1m])")  # typo
    assert promql_problems("rate(raylane_serve_requests_total[1m])")  # no ray_ prefix
    assert promql_problems("sum by (status) (rate(ray_raylane_serve_requests_total[1m]))")
    assert promql_problems('ray_raylane_train_loss{model="digits"}')
    assert promql_problems("histogram_quantile(0.5, rate(ray_raylane_serve_batch_size_sum[1m]))")

    misspelt = serve_config()
    misspelt["applications"][0]["deployments"][0]["autoscaling_config"]["min_replica"] = 1
    assert serve_config_problems(misspelt)
    inverted = serve_config()
    inverted["applications"][0]["deployments"][0]["autoscaling_config"]["min_replicas"] = 99
    assert serve_config_problems(inverted)
    no_import = serve_config()
    del no_import["applications"][0]["import_path"]
    assert serve_config_problems(no_import)
