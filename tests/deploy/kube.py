"""Reading the deployment artifacts the way their consumers do, for the tests.

- Kubernetes manifests (k8s/): the plain files applied as they are, and every Kustomize root
  rendered with `kubectl kustomize` and its ${name} placeholders resolved the way the
  pipelines' deploy stages resolve them (k8s/render.py); a container's environment and
  command as the kubelet would give them ($(VAR) expansion, ConfigMap and Secret references,
  field refs).
- Dockerfiles: their ENV, WORKDIR and CMD, as the image would run them.
- Container paths mapped onto this machine (/app is the repository, /models a test model
  root, ...) so the same commands run here outside a container.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "k8s"
NO_KUBECTL = ("kubectl is not installed: the tests that render k8s/ with `kubectl kustomize` "
              "(Kustomize v5) cannot run; install kubectl to run them")
# A value for every placeholder the manifests hold, as a pipeline run gives them (strings).
SAMPLE_VALUES = {"modelVersion": "7", "drainVersion": "6", "shadowFraction": "0.1", "canaryWeight": "0.1",
                 "minJobs": "50", "judgeTimeoutSeconds": "7200"}


# --- manifests ---------------------------------------------------------------------------

def plain_manifest_files() -> list[Path]:
    """The manifests applied as they are (no Kustomize): k8s/*.yaml and k8s/examples/."""
    return sorted([*K8S.glob("*.yaml"), *(K8S / "examples").glob("*.yaml")])


def kustomizations() -> list[Path]:
    """Every directory of k8s/ with a kustomization.yaml (roots, bases and components)."""
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def is_component(directory: Path) -> bool:
    return _parsed(directory / "kustomization.yaml")[0].get("kind") == "Component"


def kustomize_roots() -> list[Path]:
    """The directories a pipeline bakes or a person applies: not the components, not the bases
    (which lack the color or the settings and are never deployed alone)."""
    return [d for d in kustomizations() if not is_component(d) and d.name != "base"]


def render_module() -> ModuleType:
    """k8s/render.py, the renderer for a deploy by hand, which the tests use too."""
    spec = importlib.util.spec_from_file_location("k8s_render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip(NO_KUBECTL)


@functools.cache
def _kustomized(directory: Path) -> list[dict[str, Any]]:
    return render_module().kustomize(str(directory))


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIRECTORY`, placeholders left in (skips the test without kubectl)."""
    require_kubectl()
    return copy.deepcopy(_kustomized(directory))


def rendered(directory: Path, **values: str) -> list[dict[str, Any]]:
    """DIRECTORY rendered and its placeholders resolved with VALUES (SAMPLE_VALUES for the
    rest), as a deploy stage of the pipelines sends it to the cluster."""
    return render_module().resolve(kustomized(directory), {**SAMPLE_VALUES, **values})


def source_id(path: Path) -> str:
    return str(path.relative_to(K8S))


def sources() -> list[Path]:
    """What gets deployed: the plain files and the Kustomize roots."""
    return plain_manifest_files() + kustomize_roots()


def documents_of(source: Path, **values: str) -> list[dict[str, Any]]:
    return rendered(source, **values) if source.is_dir() else load(source)


def load(path: Path) -> list[dict[str, Any]]:
    return copy.deepcopy(_parsed(path))


@functools.cache
def _parsed(path: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc]


def all_documents(**values: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every object deployed: plain files and rendered roots (skips the test without kubectl)."""
    for source in sources():
        for doc in documents_of(source, **values):
            yield source, doc


def object_name(doc: dict[str, Any]) -> str:
    return doc["metadata"].get("name") or doc["metadata"]["generateName"].rstrip("-")


def base_name(doc: dict[str, Any]) -> str:
    """The name without Kustomize's hash suffix (recognition-config-5gttg69dkf -> recognition-config)."""
    name = object_name(doc)
    return name.rsplit("-", 1)[0] if doc["kind"] in ("ConfigMap", "Secret") and is_hashed(name) else name


def is_hashed(name: str) -> bool:
    return re.fullmatch(r".+-[bcdfghkmt2-9]{10}", name) is not None


def find(kind: str, name: str, **values: str) -> dict[str, Any]:
    """The one object of this kind and name (hash suffix left out for ConfigMaps) deployed."""
    matches = [doc for _, doc in all_documents(**values) if doc["kind"] == kind and base_name(doc) == name]
    unique = {yaml.safe_dump(doc) for doc in matches}
    assert len(unique) == 1, f"{len(unique)} different manifests of {kind} {name}"
    return matches[0]


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    docs = [doc for doc in documents if doc["kind"] == kind]
    assert len(docs) == 1, f"{len(docs)} documents of kind {kind}"
    return docs[0]


def configmaps(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The data of the ConfigMaps among DOCUMENTS, by their (hashed) names."""
    return {doc["metadata"]["name"]: doc["data"] for doc in documents if doc["kind"] == "ConfigMap"}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"].get("labels", {})


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc) or {}
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in containers(doc) if c["name"] == name)


# --- Dockerfiles -------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            current = ""
    return instructions


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def image_env(path: Path) -> dict[str, str]:
    """The ENV of the final stage, in order ($VAR references expanded)."""
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for keyword, arguments in final_stage(path):
        if keyword != "ENV":
            continue
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def image_json_argv(path: Path, instruction: str) -> list[str]:
    import json

    values = [arguments for keyword, arguments in final_stage(path) if keyword == instruction]
    assert values, f"{path.name} has no {instruction}"
    argv = values[-1]
    if instruction == "HEALTHCHECK":
        argv = argv.split(" CMD ", 1)[1]
    return json.loads(argv)


def image_workdir(path: Path) -> str:
    return [arguments for keyword, arguments in final_stage(path) if keyword == "WORKDIR"][-1]


# --- running a container's command here --------------------------------------------------

class PathMap:
    """Container paths -> paths on this machine (longest prefix first)."""

    def __init__(self, mapping: Mapping[str, Path]) -> None:
        self.mapping = sorted(mapping.items(), key=lambda item: -len(item[0]))

    def __call__(self, value: str) -> str:
        for prefix, target in self.mapping:
            if value == prefix or value.startswith(prefix + "/"):
                return str(target) + value[len(prefix):]
        return value


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; $$ escapes, unknown references stay as they are."""
    return re.sub(r"\$\$|\$\((\w+)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(doc: dict[str, Any], name: str, *, image: dict[str, str],
                  configmaps: Mapping[str, Mapping[str, str]], secrets: Mapping[str, Mapping[str, str]],
                  host_ip: str = "127.0.0.1") -> dict[str, str]:
    """The environment the kubelet gives a container: image ENV, then envFrom, then env."""
    spec = container(doc, name)
    env = dict(image)
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    labels = doc["spec"]["template"]["metadata"].get("labels", {})
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif source["fieldRef"]["fieldPath"] == "status.hostIP":
            env[item["name"]] = host_ip
        else:
            match = re.fullmatch(r"metadata\.labels\['(.+)'\]", source["fieldRef"]["fieldPath"])
            assert match, f"unsupported fieldRef {source['fieldRef']}"
            env[item["name"]] = labels[match.group(1)]
    return env


def container_argv(doc: dict[str, Any], name: str, env: Mapping[str, str], image_cmd: list[str]) -> list[str]:
    spec = container(doc, name)
    argv = list(spec.get("command", image_cmd)) + list(spec.get("args", []))
    return [expand(arg, env) for arg in argv]


def secret_files(doc: dict[str, Any], name: str, secrets: Mapping[str, Mapping[str, str]],
                 paths: PathMap) -> None:
    """Write the Secret volumes a container mounts where the path map puts them."""
    spec = pod_spec(doc) or {}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container(doc, name).get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue
        data = secrets[volume["secret"]["secretName"]]
        directory = Path(paths(mount["mountPath"]))
        directory.mkdir(parents=True, exist_ok=True)
        for item in volume["secret"].get("items") or [{"key": k, "path": k} for k in data]:
            (directory / item["path"]).write_text(data[item["key"]])


# --- the API image's packages ------------------------------------------------------------

@dataclass(frozen=True)
class Locked:
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def lock_entries(path: Path) -> dict[str, Locked]:
    """A lock file as `make lock` writes it (requirements/*.txt): each package's version,
    environment marker and hashes, by canonical name. Every line must pin with ==."""
    from packaging.utils import canonicalize_name

    entries = {}
    logical = ""
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].rstrip()  # "# via ..." annotations; hashes hold no "#"
        if line.endswith("\\"):
            logical += " " + line[:-1]
            continue
        logical = (logical + " " + line).strip()
        if not logical:
            continue
        words = logical.split()
        hashes = tuple(w.removeprefix("--hash=") for w in words if w.startswith("--hash="))
        spec = " ".join(w for w in words if not w.startswith("--hash="))
        requirement, _, marker = spec.partition(";")
        name, sep, version = requirement.partition("==")
        assert sep, f"{path.name}: {logical!r} is not pinned with =="
        entries[canonicalize_name(name.split("[")[0].strip())] = Locked(
            version.strip(), marker.strip() or None, hashes)
        logical = ""
    return entries


def requirement_pins(path: Path) -> dict[str, str]:
    """The packages pip installs from a lock file here (its markers evaluated for this
    interpreter), with their versions."""
    from packaging.markers import Marker

    return {name: entry.version for name, entry in lock_entries(path).items()
            if entry.marker is None or Marker(entry.marker).evaluate()}


def site_of(packages: list[str], target: Path) -> Path:
    """A virtualenv in which only these installed distributions (and the standard library)
    can be imported: their files are linked from this interpreter's environment, as the API
    image installs exactly requirements/api.txt. Returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = target / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    bin_dir = target / "bin"
    for package in packages:
        dist = importlib.metadata.distribution(package)
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            link = site / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
        for entry in dist.entry_points.select(group="console_scripts"):
            module, _, attr = entry.value.partition(":")
            script = bin_dir / entry.name
            script.write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
                              f"sys.exit({attr}())\n")
            script.chmod(0o755)
    return bin_dir


def base_env(path: str) -> dict[str, str]:
    """What a container starts from here: no variables of this shell but the CPU quirks
    (OPENBLAS_* keep old OpenBLAS builds from crashing on some processors)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_") or k in ("LANG", "TZ")}
    return {**keep, "PATH": path}


def settings_the_code_reads() -> set[str]:
    """Every environment variable named in the code, its start scripts or .env.example."""
    names: set[str] = set()
    sources = [ROOT / ".env.example", ROOT / "gunicorn.conf.py", *sorted((ROOT / "scripts").iterdir()),
               *sorted((ROOT / "docker" / "bin").iterdir())]
    for package in ("common", "recognition_api", "workers", "models_registry"):
        sources += sorted((ROOT / package).rglob("*.py"))
    for source in sources:
        if source.is_file():
            names |= set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", source.read_text(errors="replace")))
    return names


IMAGES = {
    "registry.example.com/listing-recognition/api": "Dockerfile.api",
    "registry.example.com/listing-recognition/worker": "Dockerfile.worker",
}


def image_name(reference: str) -> str:
    """registry/name:tag or @digest -> registry/name (a port's colon is before the last slash)."""
    reference = reference.split("@", 1)[0]
    last = reference.rsplit("/", 1)
    if ":" in last[-1]:
        return reference[: reference.rindex(":")]
    return reference
