"""The Spinnaker pipelines (k8s/spinnaker/*.json): valid, well-formed, and pointing only at
manifests, Kubernetes objects and images that this repository defines."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kube import IMAGES, K8S, ROOT, all_documents, image_name, load

PIPELINES = sorted((K8S / "spinnaker").glob("*.json"))
KUBERNETES_STAGES = {"deployManifest", "runJobManifest", "scaleManifest", "deleteManifest", "findArtifactsFromResource"}
KNOWN_STAGES = KUBERNETES_STAGES | {"manualJudgment", "evaluateVariables"}


def pipeline(name: str) -> dict[str, Any]:
    return json.loads((K8S / "spinnaker" / f"{name}.json").read_text())


def stages(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["refId"]: s for s in p["stages"]}


def ancestors(p: dict[str, Any], ref: str) -> set[str]:
    graph = stages(p)
    seen: set[str] = set()
    todo = list(graph[ref]["requisiteStageRefIds"])
    while todo:
        parent = todo.pop()
        if parent not in seen:
            seen.add(parent)
            todo += graph[parent]["requisiteStageRefIds"]
    return seen


# --- SpEL, as far as the pipelines use it ------------------------------------------------

def spel(expression: str, parameters: dict[str, str], variables: dict[str, str]) -> str:
    """${parameters.x}, ${variable} and ${parameters.x == 'a' ? 'b' : 'c'}: nothing else."""
    expression = expression.strip()
    ternary = re.fullmatch(r"parameters\.(\w+) == '([^']*)' \? '([^']*)' : '([^']*)'", expression)
    if ternary:
        name, value, yes, no = ternary.groups()
        return yes if parameters[name] == value else no
    if expression.startswith("parameters."):
        return parameters[expression.removeprefix("parameters.")]
    assert re.fullmatch(r"\w+", expression), f"unsupported expression {expression!r}"
    return variables[expression]


def resolve(text: str, parameters: dict[str, str], variables: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]*)\}", lambda m: spel(m.group(1), parameters, variables), text)


def model_versions() -> list[str]:
    return sorted(p.stem.removeprefix("reference-") for p in (K8S / "models").glob("reference-*.yaml")
                  if not p.stem.endswith("-populate"))


def parameter_sets(p: dict[str, Any]) -> list[dict[str, str]]:
    """Every combination of the parameters' values: their options, the model versions that
    have volume files, or the default."""
    domains = []
    for parameter in p["parameterConfig"]:
        if parameter["hasOptions"]:
            values = [o["value"] for o in parameter["options"]]
        elif parameter["name"] == "modelVersion":
            values = model_versions()
        else:
            values = [parameter["default"]]
        assert values, parameter["name"]
        domains.append([(parameter["name"], v) for v in values])
    return [dict(combination) for combination in itertools.product(*domains)]


def resolved_stages(p: dict[str, Any], parameters: dict[str, str]) -> list[dict[str, Any]]:
    variables: dict[str, str] = {}
    out = []
    for stage in p["stages"]:
        if stage["type"] == "evaluateVariables":
            for variable in stage["variables"]:
                variables[variable["key"]] = resolve(variable["value"], parameters, variables)
        out.append(json.loads(resolve(json.dumps(stage), parameters, variables)))
    return out


def declared_objects() -> set[tuple[str, str]]:
    return {(doc["kind"].lower(), doc["metadata"]["name"]) for _, doc in all_documents() if "name" in doc["metadata"]}


# --- tests -------------------------------------------------------------------------------

def test_there_are_pipelines_for_volumes_rollout_rollback_and_code_deploys() -> None:
    assert {p.stem for p in PIPELINES} == {"model-volume", "model-rollout", "model-rollback", "code-deploy"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_the_pipeline_is_json_with_a_well_formed_stage_graph(path: Path) -> None:
    p = json.loads(path.read_text())
    assert p["application"] == "listingrecognition" and p["name"] and p["stages"]
    refs = [s["refId"] for s in p["stages"]]
    assert len(refs) == len(set(refs)), "duplicate refId"
    for stage in p["stages"]:
        assert stage["type"] in KNOWN_STAGES, stage["type"]
        assert stage["name"]
        assert set(stage["requisiteStageRefIds"]) <= set(refs), stage["refId"]
        assert stage["refId"] not in ancestors(p, stage["refId"]), f"cycle through {stage['refId']}"
        if stage["type"] in KUBERNETES_STAGES:
            assert stage["cloudProvider"] == "kubernetes" and stage["account"]
    for parameter in p["parameterConfig"]:
        assert parameter["required"] and parameter["default"] != "" or parameter["name"] == "modelVersion"
    expressions = re.findall(r"\$\{([^}]*)\}", path.read_text())
    names = {parameter["name"] for parameter in p["parameterConfig"]}
    for expression in expressions:
        for used in re.findall(r"parameters\.(\w+)", expression):
            assert used in names, f"${{{expression}}} uses an undeclared parameter"


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_manifest_a_stage_reads_exists_for_every_value_of_the_parameters(path: Path) -> None:
    p = json.loads(path.read_text())
    for parameters in parameter_sets(p):
        for stage in resolved_stages(p, parameters):
            artifact = stage.get("manifestArtifact")
            if stage["type"] in ("deployManifest", "runJobManifest"):
                assert stage["source"] == "artifact" and artifact, stage["refId"]
            if not artifact:
                continue
            file = ROOT / artifact["name"]
            assert artifact["type"] == "github/file" and artifact["reference"].endswith("/contents/" + artifact["name"])
            assert file.is_file(), f"{stage['refId']} with {parameters} reads {artifact['name']}, which does not exist"
            documents = load(file)
            if stage["type"] == "runJobManifest":
                assert [d["kind"] for d in documents] == ["Job"], f"{artifact['name']} must hold exactly one Job"
            # Their manifests have no SpEL of their own ($(VAR) is Kubernetes').
            assert stage.get("skipExpressionEvaluation") is True and "${" not in file.read_text()


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_object_a_stage_scales_finds_or_deletes_is_declared_in_k8s(path: Path) -> None:
    p = json.loads(path.read_text())
    objects = declared_objects()
    for parameters in parameter_sets(p):
        for stage in resolved_stages(p, parameters):
            if "manifestName" in stage:
                kind, name = stage["manifestName"].split(" ", 1)
                assert (kind.lower(), name) in objects, f"{stage['refId']} with {parameters}: {stage['manifestName']}"


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_image_a_pipeline_binds_is_built_from_a_dockerfile_of_the_repo(path: Path) -> None:
    p = json.loads(path.read_text())
    for expected in p["expectedArtifacts"]:
        match = expected["matchArtifact"]
        if match["type"] == "docker/image":
            assert match["name"] in IMAGES and (ROOT / IMAGES[match["name"]]).is_file(), match["name"]
    for trigger in p["triggers"]:
        if trigger["type"] == "docker":
            assert f"{trigger['registry']}/{trigger['repository']}" in IMAGES
    for parameters in parameter_sets(p):
        for stage in resolved_stages(p, parameters):
            if "manifestArtifact" not in stage:
                continue
            for doc in load(ROOT / stage["manifestArtifact"]["name"]):
                spec = doc.get("spec", {}).get("template", {}).get("spec", {})
                for c in spec.get("initContainers", []) + spec.get("containers", []):
                    name = image_name(c["image"])
                    if name.startswith("registry.example.com/"):
                        assert name in IMAGES, c["image"]
                        # Bound to what runs now (find stage upstream) or to the triggering build.
                        bound = {e["matchArtifact"]["name"] for e in p["expectedArtifacts"]
                                 if e["id"] in stage.get("requiredArtifactIds", [])}
                        finders = [stages(p)[r] for r in ancestors(p, stage["refId"])
                                   if stages(p)[r]["type"] == "findArtifactsFromResource"]
                        assert name in bound or finders, f"{stage['refId']}: nothing binds {name}"


def test_the_rollout_deploys_waits_until_ready_judges_promotes_then_drains_before_scaling_down() -> None:
    p = pipeline("model-rollout")
    s = stages(p)
    order = ["deploy", "scale-up", "status-before", "judge-promote", "promote", "judge-keep", "drain-previous",
             "scale-down-previous"]
    for earlier, later in itertools.pairwise(order):
        assert earlier in ancestors(p, later), f"{earlier} must come before {later}"
    assert s["judge-promote"]["type"] == s["judge-keep"]["type"] == "manualJudgment"
    for parameters in parameter_sets(p):
        resolved = {st["refId"]: st for st in resolved_stages(p, parameters)}
        new, old = parameters["targetColor"], {"green": "blue", "blue": "green"}[parameters["targetColor"]]
        assert resolved["deploy"]["manifestArtifact"]["name"] == f"k8s/worker-{new}.yaml"
        assert resolved["scale-up"]["manifestName"] == f"deployment worker-{new}"
        assert resolved["promote"]["manifestArtifact"]["name"] == f"k8s/jobs/promote-{new}.yaml"
        assert resolved["drain-previous"]["manifestArtifact"]["name"] == f"k8s/jobs/drain-wait-{old}.yaml"
        assert resolved["scale-down-previous"]["manifestName"] == f"deployment worker-{old}"
        assert resolved["scale-down-previous"]["replicas"] == "0"
        # The new color runs the code that runs now: the image comes from the old color.
        assert resolved["worker-image"]["manifestName"] == f"deployment worker-{old}"


def test_the_rollout_has_a_rollback_path_and_there_is_a_rollback_pipeline() -> None:
    p = pipeline("model-rollout")
    s = stages(p)
    keep = s["judge-keep"]
    assert [i["value"] for i in keep["judgmentInputs"]] == ["keep", "roll back"]
    for ref, choice in [("drain-previous", "keep"), ("scale-down-previous", "keep"), ("rollback", "roll back"),
                        ("drain-new", "roll back"), ("scale-down-new", "roll back")]:
        assert s[ref]["stageEnabled"]["expression"] == f"#judgment('{keep['name']}') == '{choice}'"
    assert s["rollback"]["manifestArtifact"]["name"] == "k8s/jobs/rollback.yaml"

    back = pipeline("model-rollback")
    b = stages(back)
    for earlier, later in itertools.pairwise(["scale-up", "judge-rollback", "rollback", "drain-other",
                                              "scale-down-other"]):
        assert earlier in ancestors(back, later)
    assert b["rollback"]["manifestArtifact"]["name"] == "k8s/jobs/rollback.yaml"
    command = load(ROOT / "k8s/jobs/rollback.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["python3", "-m", "models_registry", "rollback"]


def test_a_model_volume_is_populated_and_verified_before_its_writable_claim_is_deleted() -> None:
    p = pipeline("model-volume")
    order = ["volumes", "populate", "drop-writable-claim", "drop-writable-volume"]
    for earlier, later in itertools.pairwise(order):
        assert earlier in ancestors(p, later)
    for parameters in parameter_sets(p):
        resolved = {st["refId"]: st for st in resolved_stages(p, parameters)}
        version = parameters["modelVersion"]
        populate = f"model-reference-{version}-populate"
        assert resolved["drop-writable-claim"]["manifestName"] == f"persistentvolumeclaim {populate}"
        assert resolved["drop-writable-volume"]["manifestName"] == f"persistentvolume {populate}"


def test_the_code_deploy_rolls_both_colors_onto_new_images_with_the_same_volumes() -> None:
    p = pipeline("code-deploy")
    deployed = {s["manifestArtifact"]["name"] for s in p["stages"] if s["type"] == "deployManifest"}
    assert {"k8s/api.yaml", "k8s/worker-blue.yaml", "k8s/worker-green.yaml"} <= deployed
    assert not any(name.startswith("k8s/models/") for name in deployed), "a code deploy brings no new volume"
    assert {e["matchArtifact"]["name"] for e in p["expectedArtifacts"]} == set(IMAGES)
    assert all(e["usePriorArtifact"] for e in p["expectedArtifacts"]), "one image alone may trigger it"
