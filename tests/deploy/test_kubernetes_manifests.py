"""The Kubernetes manifests in deploy/kubernetes, rendered offline and checked without a cluster.

Every kustomization (the base and each overlay) is rendered with `kubectl kustomize` (or `kustomize build`),
and every object it yields is validated against the Kubernetes schemas by kubernetes-validate in strict mode.
Then the properties the design asks of a deployment are checked on the rendered objects: each Deployment is
locked down (non-root, read-only root, no privilege escalation, no capabilities, the runtime's seccomp profile,
probes on the management port, requests and limits, a writable /tmp), its environment is one its component's
settings accept, no CA root key is anywhere (docs/design.md §3, the offline root), and the network policies
allow exactly the paths of docs/design.md §3.
"""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.ca_service import api as ca_api
from services.enrollment_service import api as enrollment_api
from services.enrollment_service import user_api
from services.otp_service import api as otp_api

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(
    path.parent.relative_to(KUBERNETES).as_posix() for path in KUBERNETES.rglob("kustomization.yaml")
)
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The Kubernetes versions the objects must be valid for: an older supported release and the newest schemas."""

COMPONENTS = ("ca", "otp", "enrollment", "gateway")
GRPC_PORTS = {"ca": 50051, "otp": 50052, "enrollment": 50053}
NAME = "app.kubernetes.io/name"
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - each pod's listeners bind every interface of the pod's own network
TMP = "/tmp"  # noqa: S108 - the path the containers get a writable emptyDir at
COMPONENT = "app.kubernetes.io/component"

Peer = tuple[str, str | int]
"""An allowed connection: who (a kagi component, `anywhere`, `prometheus`, `kube-dns`, `external`) and a port."""


def _renderer() -> list[str]:
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    pytest.fail("rendering the manifests needs kubectl (its built-in kustomize) or kustomize on PATH")


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """Render one kustomization (relative to deploy/kubernetes) and return its objects."""
    result = subprocess.run(
        [*_renderer(), str(KUBERNETES / kustomization)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"rendering {kustomization} failed:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def objects(kustomization: str, kind: str) -> dict[str, dict[str, Any]]:
    """Return the rendered objects of one kind, by name."""
    return {item["metadata"]["name"]: item for item in render(kustomization) if item["kind"] == kind}


def deployment(kustomization: str, component: str) -> dict[str, Any]:
    """Return the Deployment of a component."""
    return objects(kustomization, "Deployment")[f"kagi-{component}"]


def main_container(kustomization: str, component: str) -> dict[str, Any]:
    """Return the container that runs the component."""
    containers: list[dict[str, Any]] = deployment(kustomization, component)["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def environment(kustomization: str, component: str) -> dict[str, str]:
    """Return the environment the component's container gets: its ConfigMaps, then its own variables."""
    container = main_container(kustomization, component)
    config_maps = objects(kustomization, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", ()):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", ())})
    return env


def container_port(container: Mapping[str, Any], name: str) -> int:
    """Return the number of a container's named port."""
    (port,) = (p["containerPort"] for p in container["ports"] if p["name"] == name)
    return int(port)


@pytest.fixture(params=KUSTOMIZATIONS)
def kustomization(request: pytest.FixtureRequest) -> str:
    """Each kustomization under deploy/kubernetes, relative to it."""
    return str(request.param)


def test_the_base_and_the_production_overlay_are_there() -> None:
    """Proves the checks below run over the base and the production overlay, not over nothing."""
    assert {"base", "overlays/production"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(kustomization: str, version: str) -> None:
    """Proves each object a kustomization renders passes kubernetes-validate's strict schemas (no unknown field)."""
    rendered = render(kustomization)
    assert len(rendered) >= 20
    for document in rendered:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{document['kind']}/{document['metadata']['name']} is invalid for {version}: {exc.message}")


def test_each_component_runs_the_one_image_as_kagi_serve(kustomization: str) -> None:
    """Proves there is one Deployment per component, each running `kagi serve COMPONENT` from the image `kagi`,
    and that the production overlay pins a released tag."""
    deployments = objects(kustomization, "Deployment")
    assert set(deployments) == {f"kagi-{component}" for component in COMPONENTS}
    images: set[str] = set()
    for component in COMPONENTS:
        spec = deployment(kustomization, component)["spec"]["template"]["spec"]
        container = main_container(kustomization, component)
        assert container["command"] == ["kagi", "serve", component]
        images.update(c["image"] for c in (*spec["containers"], *spec.get("initContainers", ())))
    (image,) = images
    assert image.rsplit("/", 1)[-1].split(":")[0] == "kagi"
    if kustomization.startswith("overlays/"):
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag not in ("", "latest"), f"{kustomization} must pin the image's tag, not {image!r}"


def test_every_deployment_is_locked_down(kustomization: str) -> None:
    """Proves every container of every Deployment runs as non-root on a read-only root, cannot escalate, holds no
    capability, runs under the RuntimeDefault seccomp profile, has CPU and memory requests and limits, and that
    pods get no API token and a writable /tmp from an emptyDir."""
    for name, item in objects(kustomization, "Deployment").items():
        pod = item["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert not any(pod.get(host, False) for host in ("hostNetwork", "hostPID", "hostIPC")), name
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert not any("hostPath" in volume for volume in volumes.values()), name
        for container in (*pod["containers"], *pod.get("initContainers", ())):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            assert security.get("privileged", False) is False, where
            assert security.get("runAsNonRoot", True) is True, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
        (main,) = pod["containers"]
        (tmp,) = (mount for mount in main["volumeMounts"] if mount["mountPath"] == TMP)
        assert "emptyDir" in volumes[tmp["name"]], name


def test_probes_ask_the_management_endpoint(kustomization: str) -> None:
    """Proves each component is probed on its own management listener: liveness and startup on /healthz,
    readiness on /readyz, at the port the component's KAGI_<C>_MANAGEMENT_ADDR binds on every interface."""
    for component in COMPONENTS:
        container = main_container(kustomization, component)
        host, port = environment(kustomization, component)[f"KAGI_{component.upper()}_MANAGEMENT_ADDR"].rsplit(":", 1)
        assert host == EVERY_INTERFACE
        assert container_port(container, "management") == int(port)
        for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "management"}, f"{component} {probe}"


def _secret_tree(tmp_path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Return ENV with each /etc/kagi file moved under TMP_PATH, made with content of the right shape."""
    moved = dict(env)
    for name, value in env.items():
        if value.startswith("/etc/kagi/"):
            path = tmp_path / value.removeprefix("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            content = base64.b64encode(bytes(32)).decode() if name == "KAGI_OTP_KEK_FILE" else "x" * 48
            path.write_text(content)
            moved[name] = str(path)
    return moved


def _settings(component: str, env: Mapping[str, str]) -> Any:
    if component == "ca":
        from services.ca_service.main import CaSettings

        return CaSettings.from_env(env)
    if component == "otp":
        from services.otp_service.main import OtpSettings

        return OtpSettings.from_env(env)
    if component == "enrollment":
        from services.enrollment_service.main import EnrollmentSettings

        return EnrollmentSettings.from_env(env)
    from gateway.settings import GatewaySettings

    return GatewaySettings.from_env(env)


class RecordingEnvironment(dict[str, str]):
    """An environment that remembers which variables were asked for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        """Return the variable, noting that it was read."""
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


READ_BY_THE_COMMAND = {"KAGI_LOG_LEVEL"}
"""Variables `kagi serve` itself reads, before any component's settings."""


def test_each_environment_is_one_its_components_settings_accept(kustomization: str, tmp_path: Path) -> None:
    """Proves each component's `from_env` accepts the environment its Deployment gives it (secret files in
    place), reads every variable the container sets for it, that every ConfigMap variable is read by some
    component, and that the ports the settings then listen on are the container's declared ports."""
    config_read: set[str] = set(READ_BY_THE_COMMAND)
    config_keys: set[str] = set()
    for component in COMPONENTS:
        env = environment(kustomization, component)
        for name, value in env.items():
            if name.endswith("_FILE") or "_TLS_" in name:
                assert value.startswith("/etc/kagi/"), f"{component}: {name} should name a mounted Secret's file"
        recording = RecordingEnvironment(_secret_tree(tmp_path / component, env))
        settings = _settings(component, recording)
        container = main_container(kustomization, component)
        own = {item["name"] for item in container.get("env", ())}
        assert own <= recording.read, f"{component} sets variables it never reads: {sorted(own - recording.read)}"
        config_keys |= set(env) - own
        config_read |= recording.read
        assert settings.management == (EVERY_INTERFACE, container_port(container, "management"))
        if component == "gateway":
            assert settings.host == EVERY_INTERFACE
            assert settings.https_port == container_port(container, "https")
            assert settings.http_port == container_port(container, "pki-http")
            assert settings.backend_tls is not None
        else:
            assert settings.listen.host == EVERY_INTERFACE
            assert settings.listen.port == container_port(container, "grpc") == GRPC_PORTS[component]
            assert settings.listen.tls is not None
    assert config_keys <= config_read, f"ConfigMap variables nobody reads: {sorted(config_keys - config_read)}"


def test_secret_files_come_from_mounted_secrets(kustomization: str) -> None:
    """Proves each file an environment variable names lies in a Secret volume mounted read-only (whole, not by
    subPath, so a replaced Secret reaches running pods), and that the TLS credentials are per component."""
    tls_secrets = set()
    for component in COMPONENTS:
        pod = deployment(kustomization, component)["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        container = main_container(kustomization, component)
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        for name, value in environment(kustomization, component).items():
            if not value.startswith("/etc/kagi/"):
                continue
            (mount,) = (mount for path, mount in mounts.items() if value.startswith(path + "/"))
            assert mount.get("readOnly") is True, f"{component}: {name}"
            assert "subPath" not in mount, f"{component}: {name}"
            assert "secret" in volumes[mount["name"]], f"{component}: {name} is not from a Secret"
        tls_secrets.add(volumes["tls"]["secret"]["secretName"])
    assert tls_secrets == {f"kagi-{component}-tls" for component in COMPONENTS}


def test_no_root_ca_key_is_anywhere_in_the_cluster(kustomization: str) -> None:
    """Proves the offline root stays offline: no object names a root key or its passphrase, and the CA mounts
    only its TLS credential, its issuing CA directory and the issuing keys' passphrase."""
    for document in render(kustomization):
        text = yaml.safe_dump(document).lower()
        for word in ("root-key", "root_key", "root-passphrase", "root_passphrase", "rootkey"):
            assert word not in text.replace("root-key.pem", ""), f"{document['kind']}/{document['metadata']['name']}"
    pod = deployment(kustomization, "ca")["spec"]["template"]["spec"]
    secrets = {volume["secret"]["secretName"] for volume in pod["volumes"] if "secret" in volume}
    assert secrets == {"kagi-ca-tls", "kagi-ca-authority", "kagi-ca-passphrase"}
    for component in ("otp", "enrollment", "gateway"):
        volumes = deployment(kustomization, component)["spec"]["template"]["spec"]["volumes"]
        assert not any(v.get("secret", {}).get("secretName", "").startswith("kagi-ca-") for v in volumes), component


def _copy_script(kustomization: str) -> str:
    (init,) = deployment(kustomization, "ca")["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["python3", "-c"]
    return str(init["command"][2])


def test_the_ca_directory_copy_takes_the_secret_and_refuses_a_root_key(kustomization: str, tmp_path: Path) -> None:
    """Proves the CA's init container copies the Secret's files (not the volume's hidden entries) into the
    writable CA directory, keys 0600, and fails rather than copy a root key put in the Secret by mistake."""
    source, target = tmp_path / "secret", tmp_path / "ca"
    source.mkdir()
    target.mkdir()
    (source / "..data").mkdir()
    for name in ("root.pem", "root.crl", "internal.pem", "internal-key.pem", "customer.pem", "customer-key.pem"):
        (source / name).write_text(name)
    script = _copy_script(kustomization).replace("/etc/kagi/ca-authority", str(source))
    script = script.replace("/var/lib/kagi/ca", str(target))

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert sorted(path.name for path in target.iterdir()) == sorted(p.name for p in source.iterdir() if p.is_file())
    assert (target / "internal-key.pem").stat().st_mode & 0o777 == 0o600
    assert (target / "root.pem").stat().st_mode & 0o777 == 0o644

    (source / "root-key.pem").write_text("a root key")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode != 0
    assert "offline" in run.stderr
    assert not (target / "root-key.pem").exists()


def test_services_headless_for_grpc_and_a_load_balancer_for_the_gateway(kustomization: str) -> None:
    """Proves the gRPC services are headless (clients resolve every replica's address and balance over them)
    on their gRPC ports, and the gateway is exposed by a LoadBalancer on 443 (HTTPS) and 80 (PKI files)."""
    services = objects(kustomization, "Service")
    assert set(services) == {f"kagi-{component}" for component in COMPONENTS}
    for component, port in GRPC_PORTS.items():
        spec = services[f"kagi-{component}"]["spec"]
        assert spec["clusterIP"] == "None"
        assert spec["selector"] == {NAME: "kagi", COMPONENT: component}
        assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(port, "grpc")]
        target = environment(kustomization, "gateway" if component != "otp" else "enrollment")
        assert target[f"KAGI_{component.upper()}_TARGET"].startswith(f"dns:///kagi-{component}.")
    gateway = services["kagi-gateway"]["spec"]
    assert gateway["type"] == "LoadBalancer"
    assert gateway["externalTrafficPolicy"] == "Local"
    assert {(p["port"], p["targetPort"]) for p in gateway["ports"]} == {(443, "https"), (80, "pki-http")}


def test_every_deployment_has_a_disruption_budget_it_can_meet(kustomization: str) -> None:
    """Proves each component has a PodDisruptionBudget selecting its pods that lets one pod go at a time."""
    budgets = objects(kustomization, "PodDisruptionBudget")
    for component in COMPONENTS:
        budget = budgets[f"kagi-{component}"]["spec"]
        replicas = deployment(kustomization, component)["spec"]["replicas"]
        assert budget["selector"]["matchLabels"] == {NAME: "kagi", COMPONENT: component}
        assert 1 <= budget["minAvailable"] < replicas


def _peer(rule_peer: Mapping[str, Any]) -> str:
    """Name a network policy peer: a kagi component of this namespace, Prometheus, DNS or an outside network."""
    if "ipBlock" in rule_peer:
        return "external"
    pods = rule_peer.get("podSelector", {}).get("matchLabels", {})
    namespaces = rule_peer.get("namespaceSelector")
    if namespaces is None:
        assert pods.get(NAME) == "kagi", f"unexpected peer {rule_peer}"
        assert COMPONENT in pods, f"unexpected peer {rule_peer}"
        return str(pods[COMPONENT])
    namespace = namespaces.get("matchLabels", {}).get("kubernetes.io/metadata.name")
    if namespace == "kube-system" and pods == {"k8s-app": "kube-dns"}:
        return "kube-dns"
    if namespace == "monitoring" and pods == {NAME: "prometheus"}:
        return "prometheus"
    raise AssertionError(f"unexpected peer {rule_peer}")


def _selects(policy: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are understood here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def allowed(kustomization: str, labels: Mapping[str, str], direction: str) -> set[Peer]:
    """Return every (peer, port) the network policies let a pod with LABELS accept (ingress) or open (egress)."""
    peers: set[Peer] = set()
    policy_type, key, side = ("Ingress", "ingress", "from") if direction == "ingress" else ("Egress", "egress", "to")
    for policy in objects(kustomization, "NetworkPolicy").values():
        if not _selects(policy, labels) or policy_type not in policy["spec"]["policyTypes"]:
            continue
        for rule in policy["spec"].get(key, ()):
            names = [_peer(peer) for peer in rule[side]] if side in rule else ["anywhere"]
            for name in names:
                peers.update((name, port["port"]) for port in rule["ports"])
    return peers


def _pod_labels(kustomization: str, component: str) -> dict[str, str]:
    if component == "operator":
        return {NAME: "kagi", COMPONENT: "operator"}
    return dict(deployment(kustomization, component)["spec"]["template"]["metadata"]["labels"])


EXPECTED_INGRESS: dict[str, set[Peer]] = {
    "gateway": {("anywhere", 8443), ("anywhere", 8080)},
    "ca": {("gateway", 50051), ("otp", 50051), ("enrollment", 50051), ("operator", 50051)},
    "otp": {("enrollment", 50052), ("operator", 50052)},
    "enrollment": {("gateway", 50053), ("operator", 50053)},
}
"""docs/design.md §3 as connections: customers reach the gateway only; the gateway calls the enrollment service
and the CA's public readers; the enrollment service calls the CA and the OTP service; the operator calls each
service; the OTP service calls the CA's revocation stream. Prometheus also reaches every component's
management port."""

EXPECTED_EGRESS: dict[str, set[Peer]] = {
    "gateway": {("ca", 50051), ("enrollment", 50053)},
    "ca": set(),
    "otp": {("ca", 50051)},
    "enrollment": {("ca", 50051), ("otp", 50052)},
    "operator": {("ca", 50051), ("otp", 50052), ("enrollment", 50053)},
}
"""What each pod may open besides DNS and Redis (and the enrollment service's mail relay)."""

DNS_AND_REDIS: set[Peer] = {("kube-dns", 53), ("external", 6379), ("external", 26379)}
SMTP_PORTS = {25, 465, 587}


def test_everything_not_allowed_is_denied(kustomization: str) -> None:
    """Proves a policy selects every pod of the namespace for both ingress and egress with no rule: whatever
    the policies below do not allow is refused."""
    policies = objects(kustomization, "NetworkPolicy")
    denials = [
        p["spec"]
        for p in policies.values()
        if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and "egress" not in p["spec"]
    ]
    assert denials, "no default-deny policy"
    assert {"Ingress", "Egress"} <= set(denials[0]["policyTypes"])


def test_network_policies_allow_exactly_the_design_paths_in(kustomization: str) -> None:
    """Proves each component accepts connections from exactly the callers docs/design.md §3 gives it (and
    Prometheus on its management port), and that each caller let in is one the service's mTLS allow-lists
    admit too, so the network never opens what the code would refuse anyway."""
    code_roles = {
        "ca": {role.value for roles in ca_api.ALLOWED_ROLES.values() for role in roles},
        "otp": {role.value for roles in otp_api.ALLOWED_ROLES.values() for role in roles},
        "enrollment": {
            role.value
            for allow_list in (enrollment_api.ALLOWED_ROLES, user_api.USER_ALLOWED_ROLES)
            for roles in allow_list.values()
            for role in roles
        },
    }
    for component in COMPONENTS:
        got = allowed(kustomization, _pod_labels(kustomization, component), "ingress")
        assert got == EXPECTED_INGRESS[component] | {("prometheus", "management")}, component
        if component in code_roles:
            callers = {peer for peer, _ in got} - {"prometheus"}
            assert callers <= code_roles[component], f"{component} lets in callers its allow-lists refuse"


def test_network_policies_allow_exactly_the_design_paths_out(kustomization: str) -> None:
    """Proves each pod may open only its design §3 callees, DNS and Redis (the enrollment service also its mail
    relay), so a compromised component cannot reach a service it has no business with."""
    for component, expected in EXPECTED_EGRESS.items():
        got = allowed(kustomization, _pod_labels(kustomization, component), "egress")
        smtp = {(peer, port) for peer, port in got if peer == "external" and port in SMTP_PORTS}
        assert bool(smtp) == (component == "enrollment"), component
        assert got - smtp == expected | DNS_AND_REDIS, component


def _documents(paths: Iterator[Path]) -> Iterator[tuple[Path, str]]:
    for path in paths:
        yield path, path.read_text(encoding="utf-8")


def test_every_manifest_file_opens_with_a_comment_of_what_it_holds() -> None:
    """Proves each YAML file under deploy/kubernetes starts by saying what it holds."""
    for path, text in _documents(KUBERNETES.rglob("*.yaml")):
        assert text.startswith("# "), f"{path.relative_to(ROOT)} does not open with a comment"
