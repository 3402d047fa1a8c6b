"""code/lesson06/k8s/: every manifest is valid in strict mode, and agrees with the rest of the
repository.

No cluster runs here, so `kubernetes-validate` checks each object against the API's own schemas
offline, rejecting unknown fields (a typo such as `readOnlyRootFileSystem` would otherwise be
dropped silently by the server). What a schema cannot see is checked across files: the shutdown
budget, probe paths that exist in the app's OpenAPI schema, selectors that match labels, settings
the app knows, and the image `make build` tags; and what a security review asks of them: one
namespace, a default-deny egress policy for the agent with the allow-list it needs, CPU limits, the
model key as a file, high uids, images pinned by digest. Each check also runs on a broken copy: it
can fail.
"""

import copy
import ipaddress
import re
from pathlib import Path

import kubernetes_validate
import pytest

from research_agent.settings import Settings, variables
from tests.support.deploy import built_tags, get_paths, load_manifests

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "research-agent"

# Kubernetes versions to validate against: the newest schema this validator ships, and the oldest
# the manifests support (the preStop `sleep` action is on by default from 1.30).
VERSIONS = ["1.30.0", "1.37.0"]


def strip(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("_file", None)
    return doc


MANIFESTS = load_manifests()


def one(manifests: list[dict], kind: str, name: str) -> dict:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def seconds_of_prestop(container: dict) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return pre_stop["sleep"]["seconds"]
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[-1]) if command[:1] == ["sleep"] else 0


def environment(manifests: list[dict], container: dict) -> dict[str, str]:
    """The container's environment: its ConfigMaps' data, then its own `env` values."""
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(manifests, "ConfigMap", name).get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<from a reference>")
    return env


def dockerfile_user() -> tuple[int, int]:
    text = (AGENT_DIR / "Dockerfile.optimized").read_text(encoding="utf-8")
    uid, gid = re.search(r"^USER (\d+):(\d+)$", text, flags=re.M).groups()
    return int(uid), int(gid)


# --- The cross-file invariants: each returns the problems it finds --------------------------------


def shutdown_problems(manifests: list[dict]) -> list[str]:
    pod = one(manifests, "Deployment", "research-agent")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = environment(manifests, container)
    pre_stop = seconds_of_prestop(container)
    drain = float(env.get("SHUTDOWN_DRAIN_SECONDS", 0))
    grace = float(env["GRACEFUL_SHUTDOWN_SECONDS"])
    timeout = float(env["REQUEST_TIMEOUT_SECONDS"])
    problems = []
    if pre_stop <= 0:
        problems.append("no preStop pause: the pod stops before the endpoints know it is leaving")
    if pod["terminationGracePeriodSeconds"] <= pre_stop + drain + grace:
        problems.append(
            f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} is not above "
            f"preStop {pre_stop:g} + drain {drain:g} + GRACEFUL_SHUTDOWN_SECONDS {grace:g}"
        )
    if grace < timeout:
        problems.append(
            f"GRACEFUL_SHUTDOWN_SECONDS {grace:g} < REQUEST_TIMEOUT_SECONDS {timeout:g}: "
            "a long answer can be cut"
        )
    return problems


def probe_problems(manifests: list[dict], paths: set[str]) -> list[str]:
    problems = []
    for deployment in [m for m in manifests if m["kind"] == "Deployment"]:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = container.get(kind, {}).get("httpGet")
                if get is None:
                    continue
                where = f"{deployment['metadata']['name']} {kind}"
                if get["path"] not in paths:
                    problems.append(
                        f"{where}: GET {get['path']} is not in the app's OpenAPI schema"
                    )
                if isinstance(get["port"], str) and get["port"] not in ports:
                    problems.append(f"{where}: no container port named {get['port']}")
    agent = one(manifests, "Deployment", "research-agent")["spec"]["template"]["spec"]
    probes = agent["containers"][0]
    if probes.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
        problems.append("the agent's readiness probe must ask /ready (503 once SIGTERM arrives)")
    liveness = probes.get("livenessProbe", {})
    if liveness.get("httpGet", {}).get("path") != "/health":
        problems.append("the agent's liveness probe must ask /health (never calls Redis)")
    if liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3) < 60:
        problems.append("liveness would restart a pod that is only slow under load")
    return problems


def label_problems(manifests: list[dict]) -> list[str]:
    problems = []
    deployments = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Deployment"}
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, d in deployments.items():
        if not matches(d["spec"]["selector"]["matchLabels"], pods[name]):
            problems.append(f"Deployment {name}: its selector does not match its pod labels")
    for service in [m for m in manifests if m["kind"] == "Service"]:
        selected = [n for n, labels in pods.items() if matches(service["spec"]["selector"], labels)]
        if len(selected) != 1:
            problems.append(
                f"Service {service['metadata']['name']} selects {selected or 'no'} Deployment(s)"
            )
            continue
        container = deployments[selected[0]]["spec"]["template"]["spec"]["containers"][0]
        names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            if isinstance(port["targetPort"], str) and port["targetPort"] not in names:
                problems.append(
                    f"Service {service['metadata']['name']}: no port {port['targetPort']}"
                )
    for pdb in [m for m in manifests if m["kind"] == "PodDisruptionBudget"]:
        if not matches(pdb["spec"]["selector"]["matchLabels"], pods.get("research-agent", {})):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} misses the agent pods")
    for hpa in [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]:
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            problems.append(f"HPA {hpa['metadata']['name']} scales {target}, which is not here")
    redis_policy = one(manifests, "NetworkPolicy", "redis-from-agent-only")["spec"]
    if not matches(redis_policy["podSelector"]["matchLabels"], pods.get("redis", {})):
        problems.append("NetworkPolicy redis-from-agent-only does not select Redis")
    sources = [f["podSelector"]["matchLabels"] for r in redis_policy["ingress"] for f in r["from"]]
    if not any(matches(s, pods.get("research-agent", {})) for s in sources):
        problems.append("NetworkPolicy redis-from-agent-only does not admit the agent")
    agent_policy = one(manifests, "NetworkPolicy", "agent-egress")["spec"]
    if not matches(agent_policy["podSelector"]["matchLabels"], pods.get("research-agent", {})):
        problems.append("NetworkPolicy agent-egress does not select the agent")
    return problems


def wiring_problems(manifests: list[dict], settings: set[str], tags: set[str]) -> list[str]:
    """Image, user, settings, secret and Redis address agree with the rest of the repository."""
    problems = []
    pod = one(manifests, "Deployment", "research-agent")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    if container["image"] not in tags:
        problems.append(f"image {container['image']} is not a tag `make build` makes: {tags}")
    uid, gid = dockerfile_user()
    if (pod["securityContext"].get("runAsUser"), pod["securityContext"].get("runAsGroup")) != (
        uid,
        gid,
    ):
        problems.append(f"runAsUser/runAsGroup differ from the image's USER {uid}:{gid}")
    env = environment(manifests, container)
    unknown = set(env) - settings
    if unknown:
        problems.append(f"settings the app does not read: {sorted(unknown)}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret:
            one(manifests, "Secret", secret["secretName"])
    key_file = env.get("OPENAI_API_KEY_FILE", "")
    mounted = [
        f"{m['mountPath']}/{item['path']}"
        for m in container.get("volumeMounts", [])
        for item in volumes[m["name"]].get("secret", {}).get("items", [])
        if item["key"] == "OPENAI_API_KEY"
    ]
    if key_file not in mounted:
        problems.append(f"OPENAI_API_KEY_FILE {key_file!r} is not the Secret's file: {mounted}")
    host, port = re.match(r"redis://([\w.-]+):(\d+)/", env["REDIS_URL"]).groups()
    service = one(manifests, "Service", host)
    if int(port) not in [p["port"] for p in service["spec"]["ports"]]:
        problems.append(f"REDIS_URL port {port} is not a port of Service {host}")
    redis = one(manifests, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    policy = one(manifests, "NetworkPolicy", "redis-from-agent-only")["spec"]
    policy_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    if {p["containerPort"] for p in redis["ports"]} != policy_ports:
        problems.append("the NetworkPolicy's ports are not Redis's")
    hpa = one(manifests, "HorizontalPodAutoscaler", "research-agent")["spec"]
    pdb = one(manifests, "PodDisruptionBudget", "research-agent")["spec"]
    if hpa["minReplicas"] - pdb.get("maxUnavailable", 1) < 2:
        problems.append("fewer than 2 agent pods would serve during a voluntary disruption")
    if "cpu" not in container["resources"].get("requests", {}):
        problems.append("the HPA scales on CPU utilisation, which needs a CPU request")
    return problems


def hardening_problems(manifests: list[dict]) -> list[str]:
    problems = []
    for deployment in [m for m in manifests if m["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{name}: runAsNonRoot is not set")
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            if not context.get("readOnlyRootFilesystem"):
                problems.append(f"{name}: the root file system is writable")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: privilege escalation is allowed")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: not every capability is dropped")
            limits = container.get("resources", {}).get("limits", {})
            if "memory" not in limits or "cpu" not in limits:
                problems.append(f"{name}: no memory or no CPU limit")
            secret_env = [e["name"] for e in container.get("env", []) if "valueFrom" in e]
            if secret_env or any("secretRef" in e for e in container.get("envFrom", [])):
                problems.append(f"{name}: a secret in the environment, not a file: {secret_env}")
            image = container["image"]
            if "@sha256:" not in image and image not in built_tags():
                problems.append(f"{name}: {image} is a tag, not pinned by digest")
        if pod["securityContext"].get("runAsUser", 0) < 10000:
            problems.append(f"{name}: a uid below 10000 may be a user of the host")
    return problems


def namespace_problems(manifests: list[dict]) -> list[str]:
    """One namespace of its own, declared here, holding every object; Pod Security enforced."""
    namespaces = [m for m in manifests if m["kind"] == "Namespace"]
    if len(namespaces) != 1:
        return [f"expected one Namespace, found {len(namespaces)}"]
    (namespace,) = namespaces
    name = namespace["metadata"]["name"]
    problems = []
    if namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != (
        "restricted"
    ):
        problems.append(f"Namespace {name}: Pod Security's restricted profile is not enforced")
    if namespace["metadata"]["_file"] != min(m["metadata"]["_file"] for m in manifests):
        problems.append("the Namespace's file does not sort first: kubectl apply -f would fail")
    for m in manifests:
        if m["kind"] != "Namespace" and m["metadata"].get("namespace") != name:
            problems.append(f"{m['kind']} {m['metadata']['name']} is not in namespace {name}")
    return problems


METADATA = "169.254.169.254/32"  # the cloud's metadata service: node credentials


def egress_problems(manifests: list[dict]) -> list[str]:
    """The agent's pods may open connections to DNS, Redis and HTTPS outside the cluster only."""
    agent = one(manifests, "Deployment", "research-agent")["spec"]["template"]["metadata"]
    redis = one(manifests, "Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    policies = [
        m["spec"]
        for m in manifests
        if m["kind"] == "NetworkPolicy"
        and "Egress" in m["spec"].get("policyTypes", [])
        and matches(m["spec"]["podSelector"]["matchLabels"], agent["labels"])
    ]
    if not policies:
        return ["no Egress NetworkPolicy selects the agent: it may connect anywhere"]
    problems, allowed = [], set()
    for rule in (r for p in policies for r in p.get("egress", [])):
        ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
        if not ports or not rule.get("to"):
            problems.append(f"an egress rule with no ports or no peers allows too much: {rule}")
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is not None:
                network = ipaddress.ip_network(block["cidr"])
                held = [ipaddress.ip_network(e) for e in block.get("except", [])]
                if network.overlaps(ipaddress.ip_network(METADATA)) and not any(
                    ipaddress.ip_network(METADATA).subnet_of(e) for e in held
                ):
                    problems.append(f"egress to {block['cidr']} reaches the metadata service")
                allowed |= {("outside", port) for port in ports}
            elif matches(peer.get("podSelector", {}).get("matchLabels", {}), redis):
                allowed |= {("redis", port) for port in ports}
            elif peer.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns":
                allowed |= {("dns", port) for port in ports}
            else:
                problems.append(f"egress to a peer the agent does not need: {peer}")
    needed = {("dns", ("UDP", 53)), ("dns", ("TCP", 53)), ("redis", ("TCP", 6379))}
    needed |= {("outside", ("TCP", 443))}
    if needed - allowed:
        problems.append(f"the agent cannot reach {sorted(needed - allowed)}")
    return problems


# --- Tests ----------------------------------------------------------------------------------------


def test_the_folder_has_every_object_the_service_needs():
    kinds = {(m["kind"], m["metadata"]["name"]) for m in MANIFESTS}
    assert kinds == {
        ("Namespace", "research-agent"),
        ("NetworkPolicy", "agent-egress"),
        ("Deployment", "research-agent"),
        ("Service", "research-agent"),
        ("HorizontalPodAutoscaler", "research-agent"),
        ("PodDisruptionBudget", "research-agent"),
        ("ConfigMap", "research-agent-config"),
        ("Secret", "research-agent-secrets"),
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("NetworkPolicy", "redis-from-agent-only"),
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "doc", MANIFESTS, ids=lambda m: f"{m['metadata']['_file']}:{m['kind']}/{m['metadata']['name']}"
)
def test_manifest_is_valid_in_strict_mode(doc, version):
    kubernetes_validate.validate(strip(doc), version, strict=True)


def test_strict_mode_rejects_a_misspelt_field():
    deployment = strip(one(MANIFESTS, "Deployment", "research-agent"))
    context = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_secret_carries_no_key():
    secret = one(MANIFESTS, "Secret", "research-agent-secrets")
    assert not secret.get("data") and not secret.get("stringData")


def test_the_shutdown_budget_adds_up():
    assert shutdown_problems(MANIFESTS) == []


def test_probe_paths_exist_in_the_apps_openapi_schema():
    paths = get_paths()
    assert {"/health", "/ready"} <= paths
    assert probe_problems(MANIFESTS, paths) == []


def test_labels_and_selectors_match():
    assert label_problems(MANIFESTS) == []


def test_image_user_settings_and_redis_address_agree_with_the_repository():
    assert wiring_problems(MANIFESTS, set(variables()), built_tags()) == []


def test_every_container_is_hardened():
    assert hardening_problems(MANIFESTS) == []


def test_every_object_is_in_the_namespace_the_folder_declares():
    assert namespace_problems(MANIFESTS) == []


def test_the_agent_may_reach_dns_redis_and_https_outside_only():
    assert egress_problems(MANIFESTS) == []


def test_the_agent_reads_its_model_key_from_the_file_the_deployment_mounts(tmp_path, monkeypatch):
    container = one(MANIFESTS, "Deployment", "research-agent")["spec"]["template"]["spec"]
    path = environment(MANIFESTS, container["containers"][0])["OPENAI_API_KEY_FILE"]
    mounted = tmp_path / path.lstrip("/")  # that path, under a folder of the test's own
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert Settings(OPENAI_API_KEY_FILE=str(mounted)).offline  # no key in the Secret: no file
    mounted.parent.mkdir(parents=True)
    mounted.write_text("sk-from-the-secret\n")
    settings = Settings(OPENAI_API_KEY_FILE=str(mounted))
    assert settings.OPENAI_API_KEY.get_secret_value() == "sk-from-the-secret"


# --- Each check fails on a broken copy ------------------------------------------------------------


def broken(change) -> list[dict]:
    manifests = copy.deepcopy(MANIFESTS)
    change({(m["kind"], m["metadata"]["name"]): m for m in manifests})
    return manifests


def agent_container(m: dict) -> dict:
    return m[("Deployment", "research-agent")]["spec"]["template"]["spec"]["containers"][0]


def agent_pod(m: dict) -> dict:
    return m[("Deployment", "research-agent")]["spec"]["template"]["spec"]


BREAKAGES = {
    "grace too short": (
        shutdown_problems,
        lambda m: agent_pod(m).update(terminationGracePeriodSeconds=35),
    ),
    "no preStop": (shutdown_problems, lambda m: agent_container(m).pop("lifecycle")),
    "grace below the request timeout": (
        shutdown_problems,
        lambda m: m[("ConfigMap", "research-agent-config")]["data"].update(
            GRACEFUL_SHUTDOWN_SECONDS="10"
        ),
    ),
    "impatient liveness": (
        lambda ms: probe_problems(ms, get_paths()),
        lambda m: agent_container(m)["livenessProbe"].update(failureThreshold=3),
    ),
    "probe path not in the app": (
        lambda ms: probe_problems(ms, get_paths()),
        lambda m: agent_container(m)["readinessProbe"]["httpGet"].update(path="/readyz"),
    ),
    "liveness on /ready": (
        lambda ms: probe_problems(ms, get_paths()),
        lambda m: agent_container(m)["livenessProbe"]["httpGet"].update(path="/ready"),
    ),
    "service selects nothing": (
        label_problems,
        lambda m: m[("Service", "research-agent")]["spec"]["selector"].update(
            {"app.kubernetes.io/name": "agent"}
        ),
    ),
    "policy admits the wrong pods": (
        label_problems,
        lambda m: m[("NetworkPolicy", "redis-from-agent-only")]["spec"]["ingress"][0]["from"][0][
            "podSelector"
        ]["matchLabels"].update({"app.kubernetes.io/component": "worker"}),
    ),
    "PDB misses the agent": (
        label_problems,
        lambda m: m[("PodDisruptionBudget", "research-agent")]["spec"]["selector"][
            "matchLabels"
        ].update({"app.kubernetes.io/name": "research"}),
    ),
    "image nobody builds": (
        lambda ms: wiring_problems(ms, set(variables()), built_tags()),
        lambda m: agent_container(m).update(image="research-agent:latest"),
    ),
    "misspelt setting": (
        lambda ms: wiring_problems(ms, set(variables()), built_tags()),
        lambda m: m[("ConfigMap", "research-agent-config")]["data"].update(
            GRACEFUL_SHUTDOWN_SECOND="30"
        ),
    ),
    "wrong user": (
        lambda ms: wiring_problems(ms, set(variables()), built_tags()),
        lambda m: agent_pod(m)["securityContext"].update(runAsUser=1000),
    ),
    "writable root": (
        hardening_problems,
        lambda m: agent_container(m)["securityContext"].update(readOnlyRootFilesystem=False),
    ),
    "no CPU limit": (
        hardening_problems,
        lambda m: agent_container(m)["resources"]["limits"].pop("cpu"),
    ),
    "the key as a variable": (
        hardening_problems,
        lambda m: agent_container(m)["env"].append(
            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        ),
    ),
    "Redis as uid 999": (
        hardening_problems,
        lambda m: m[("Deployment", "redis")]["spec"]["template"]["spec"]["securityContext"].update(
            runAsUser=999
        ),
    ),
    "Redis by tag": (
        hardening_problems,
        lambda m: m[("Deployment", "redis")]["spec"]["template"]["spec"]["containers"][0].update(
            image="redis:7"
        ),
    ),
    "the key file not mounted": (
        lambda ms: wiring_problems(ms, set(variables()), built_tags()),
        lambda m: agent_container(m)["volumeMounts"].pop(),
    ),
    "an object in the default namespace": (
        namespace_problems,
        lambda m: m[("ConfigMap", "research-agent-config")]["metadata"].pop("namespace"),
    ),
    "egress to the metadata service": (
        egress_problems,
        lambda m: m[("NetworkPolicy", "agent-egress")]["spec"]["egress"][-1]["to"][0]["ipBlock"][
            "except"
        ].remove("169.254.0.0/16"),
    ),
    "egress anywhere": (
        egress_problems,
        lambda m: m[("NetworkPolicy", "agent-egress")]["spec"]["egress"].append({}),
    ),
    "no egress policy": (
        egress_problems,
        lambda m: m[("NetworkPolicy", "agent-egress")]["spec"].update(policyTypes=["Ingress"]),
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_each_check_catches_its_mistake(name):
    check, change = BREAKAGES[name]
    assert check(broken(change)), f"{name}: the check found nothing wrong"
