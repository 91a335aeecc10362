"""The Spinnaker pipelines (k8s/spinnaker/*.json): valid, well-formed, baking only Kustomize roots
of k8s/ and deploying only what those render; and, run here through a small emulation of Orca
(the SpEL the pipelines use, stageEnabled, Evaluate Variables, the Run Job property file, manual
judgments, a Job or a precondition that fails the run), taking the path they describe: the model
rollout judges itself, and keeps the previous color's workers until the rollout guard's window is
over and the new version is still active."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kube import (
    IMAGES,
    K8S,
    ROOT,
    PathMap,
    all_documents,
    base_env,
    configmaps,
    container_argv,
    container_env,
    containers,
    image_env,
    image_json_argv,
    image_name,
    kustomize_roots,
    kustomized,
    one,
    render_module,
    rendered,
    secret_files,
)

PIPELINES = sorted((K8S / "spinnaker").glob("*.json"))
KUBERNETES_STAGES = {"deployManifest", "runJobManifest", "scaleManifest", "patchManifest", "deleteManifest",
                     "findArtifactsFromResource"}
KNOWN_STAGES = KUBERNETES_STAGES | {"bakeManifest", "manualJudgment", "evaluateVariables", "wait",
                                    "checkPreconditions"}
# What the cluster runs when a pipeline starts: blue serves version 1 (active), green version 2.
CLUSTER = {"deployment worker-blue": {"model-version": "1"}, "deployment worker-green": {"model-version": "2"},
           "deployment recognition-api": {}}


def pipeline(name: str) -> dict[str, Any]:
    return json.loads((K8S / "spinnaker" / f"{name}.json").read_text())


def stages(p: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["refId"]: s for s in p["stages"]}


def ancestors(p: dict[str, Any], ref: str) -> list[str]:
    """Upstream stages, nearest first (the order in which Orca looks up a variable)."""
    graph = stages(p)
    seen: list[str] = []
    todo = list(graph[ref]["requisiteStageRefIds"])
    while todo:
        parent = todo.pop(0)
        if parent not in seen:
            seen.append(parent)
            todo += graph[parent]["requisiteStageRefIds"]
    return seen


def parameter_sets(p: dict[str, Any]) -> list[dict[str, str]]:
    """Every combination of the parameters' options; a sample version for modelVersion; else
    the default."""
    domains = []
    for parameter in p["parameterConfig"]:
        if parameter["hasOptions"]:
            values = [o["value"] for o in parameter["options"]]
        elif parameter["name"] == "modelVersion":
            values = ["3", "2024.06.1"]
        else:
            values = [parameter["default"]]
        assert values, parameter["name"]
        domains.append([(parameter["name"], v) for v in values])
    return [dict(combination) for combination in itertools.product(*domains)]


# --- the SpEL the pipelines use ------------------------------------------------------------

class Attrs(dict):  # type: ignore[type-arg]
    """A map whose keys read as attributes too, as SpEL reads a map's keys."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Attrs({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def split_top(expression: str, token: str) -> list[str]:
    """Split at TOKEN where it stands outside quotes, parentheses and brackets."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and expression.startswith(token, i):
            parts.append(expression[start:i])
            start = i + len(token)
            i += len(token)
            continue
        i += 1
    return parts + [expression[start:]]


def evaluate(expression: str, scope: dict[str, Any]) -> Any:
    """A SpEL expression of the forms the pipelines use: parameters.x, a variable, #stage('..')
    .outputs/.context paths, #judgment('..'), #toInt(..), ==, and/or, a ? b : c."""
    question = split_top(expression, " ? ")
    if len(question) == 2:
        condition = evaluate(question[0], scope)
        yes, no = split_top(question[1], " : ")
        return evaluate(yes if condition else no, scope)
    assert len(question) == 1, expression
    python = re.sub(r"#(stage|judgment|toInt)\(", lambda m: {"toInt": "int("}.get(m.group(1), m.group(1) + "("),
                    expression)
    assert "#" not in re.sub(r"'[^']*'", "", python), f"unsupported SpEL {expression!r}"
    return eval(python, {"__builtins__": {}, "int": int}, scope)  # noqa: S307 -- our own pipeline files


def expressions(text: str) -> list[tuple[int, int]]:
    """(start, end) of each ${...} in TEXT, quotes and brackets inside taken into account."""
    spans, i = [], 0
    while (start := text.find("${", i)) >= 0:
        depth, quote, j = 0, "", start + 2
        while True:
            ch = text[j]
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch in "([{":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif ch == "}":
                if depth == 0:
                    break
                depth -= 1
            j += 1
        spans.append((start, j + 1))
        i = j + 1
    return spans


def resolve(value: Any, scope: dict[str, Any]) -> Any:
    """Orca's evaluation of a stage's context: a string that is one ${expression} keeps its
    type, expressions inside a longer string are joined as text."""
    if isinstance(value, dict):
        return {k: resolve(v, scope) if k != "stageEnabled" else v for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    spans = expressions(value)
    if spans == [(0, len(value))]:
        return evaluate(value[2:-1], scope)
    out, last = "", 0
    for start, end in spans:
        out += value[last:start] + str(evaluate(value[start + 2:end - 1], scope))
        last = end
    return out + value[last:]


# --- one pipeline run ---------------------------------------------------------------------

@dataclass
class Run:
    """A pipeline executed stage by stage as Orca would, against CLUSTER, with the judge's
    verdict, the answers a person would give at manual judgments, and the Run Job stages whose
    Job exits non-zero (FAILING, by refId). A stage that fails with `failPipeline` (Orca's
    default) and without `continuePipeline` ends the run: TERMINAL, and no later stage starts.
    So does a precondition that fails with `failPipeline`."""

    p: dict[str, Any]
    parameters: dict[str, str]
    verdict: str = "promote"
    answers: dict[str, str] = field(default_factory=dict)
    failing: frozenset[str] = frozenset()
    ran: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: str | None = None
    status: str = "NOT_STARTED"

    def __post_init__(self) -> None:
        graph = stages(self.p)
        for ref in self.failing:
            assert graph[ref]["type"] == "runJobManifest", f"only a Job fails here, not {ref}"
        done: list[str] = []
        self.status = "RUNNING"
        while len(done) < len(graph) and self.failed is None:
            ready = [r for r, s in graph.items() if r not in done and set(s["requisiteStageRefIds"]) <= set(done)]
            assert ready, "cycle"
            self.execute(ready[0])
            done.append(ready[0])
        self.status = "TERMINAL" if self.failed else "SUCCEEDED"

    @property
    def not_started(self) -> list[str]:
        return [r for r in stages(self.p) if r not in self.ran and r not in self.skipped]

    def variables(self, ref: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for parent in reversed(ancestors(self.p, ref)):  # nearest last: it wins
            found |= self.ran.get(parent, {}).get("outputs", {})
        return found

    def scope(self, ref: str) -> dict[str, Any]:
        def stage(name: str) -> Attrs:
            return wrap(self.by_name[name])

        def judgment(name: str) -> str | None:
            return self.by_name[name].get("judgmentInput")

        return {**self.variables(ref), "parameters": wrap(self.parameters), "stage": stage, "judgment": judgment}

    def execute(self, ref: str) -> None:
        raw = stages(self.p)[ref]
        scope = self.scope(ref)
        enabled = raw.get("stageEnabled")
        if enabled and not evaluate(enabled["expression"], scope):
            self.skipped.append(ref)
            self.by_name[raw["name"]] = {"status": "SKIPPED", "context": {}, "outputs": {}}
            return
        stage: dict[str, Any] = resolve({k: v for k, v in raw.items() if k != "variables"}, scope)
        stage["context"], stage["outputs"] = {}, {}
        if raw["type"] == "evaluateVariables":
            for variable in raw["variables"]:
                stage["outputs"][variable["key"]] = resolve(variable["value"], {**scope, **stage["outputs"]})
        elif raw["type"] == "findArtifactsFromResource":
            stage["outputs"]["manifest"] = {"metadata": {"labels": CLUSTER[stage["manifestName"]]}}
        elif raw["type"] == "manualJudgment":
            self.asked.append(stage["name"])
            answer = self.answers.get(stage["name"], self.answers.get(raw["name"]))
            assert answer is not None, f"nobody answers {stage['name']!r}"
            stage["judgmentInput"] = answer
        elif raw["type"] in ("deployManifest", "runJobManifest"):
            stage["manifests"] = self.baked(ref, stage)
            if stage.get("propertyFile"):
                stage["context"]["propertyFileContents"] = {"VERDICT": self.verdict}
        elif raw["type"] == "checkPreconditions":
            stage["passed"] = all(c["context"]["expression"] for c in stage["preconditions"])
            if any(not c["context"]["expression"] and c["failPipeline"] for c in stage["preconditions"]):
                self.failed = ref
        stage["status"] = "TERMINAL" if ref in self.failing or self.failed == ref else "SUCCEEDED"
        if ref in self.failing and stage.get("failPipeline", True) and not stage.get("continuePipeline", False):
            self.failed = ref
        self.ran[ref] = stage
        self.by_name[stage["name"]] = stage

    def baked(self, ref: str, stage: dict[str, Any]) -> list[dict[str, Any]]:
        """The manifests the stage sends: its bake stage's root rendered, placeholders resolved
        with the variables this stage sees (as the deploy stage's SpEL evaluation does)."""
        bake = self.bake_of(ref, stage["manifestArtifactId"])
        variables = {k: v for k, v in self.variables(ref).items() if isinstance(v, str)}
        root = ROOT / Path(bake["kustomizeFilePath"]).parent
        return render_module().resolve(kustomized(root), variables)

    def bake_of(self, ref: str, artifact_id: str) -> dict[str, Any]:
        bakes = [self.ran[a] for a in ancestors(self.p, ref) if a in self.ran and self.ran[a]["type"] == "bakeManifest"
                 and any(e["id"] == artifact_id for e in self.ran[a]["expectedArtifacts"])]
        assert len(bakes) == 1, f"{ref}: {len(bakes)} upstream bakes produce {artifact_id}"
        return bakes[0]

    def job(self, ref: str) -> dict[str, Any]:
        (job,) = [d for d in self.ran[ref]["manifests"] if d["kind"] == "Job"]
        return job

    def command(self, ref: str) -> list[str]:
        (c,) = containers(self.job(ref))
        return c["command"]


# --- the pipelines' shape -----------------------------------------------------------------

def test_there_are_pipelines_for_volumes_rollout_rollback_and_code_deploys() -> None:
    assert {p.stem for p in PIPELINES} == {"model-volume", "model-rollout", "model-rollback", "code-deploy"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_the_pipeline_is_json_with_a_well_formed_stage_graph(path: Path) -> None:
    p = json.loads(path.read_text())
    assert p["application"] == "listingrecognition" and p["name"] and p["stages"]
    refs = [s["refId"] for s in p["stages"]]
    assert len(refs) == len(set(refs)), "duplicate refId"
    names = [s["name"] for s in p["stages"]]
    assert len(names) == len(set(names)), "#stage('name') needs unique names"
    for stage in p["stages"]:
        assert stage["type"] in KNOWN_STAGES, stage["type"]
        assert set(stage["requisiteStageRefIds"]) <= set(refs), stage["refId"]
        assert stage["refId"] not in ancestors(p, stage["refId"]), f"cycle through {stage['refId']}"
        if stage["type"] in KUBERNETES_STAGES:
            assert stage["cloudProvider"] == "kubernetes" and stage["account"]
    for parameter in p["parameterConfig"]:
        assert parameter["required"] and parameter["default"] != "" or parameter["name"] == "modelVersion"
    declared = {parameter["name"] for parameter in p["parameterConfig"]}
    for start, end in expressions(path.read_text()):
        for used in re.findall(r"parameters\.(\w+)", path.read_text()[start:end]):
            assert used in declared, f"{path.read_text()[start:end]} uses an undeclared parameter"


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_bake_renders_a_kustomize_root_of_the_repository(path: Path) -> None:
    p = json.loads(path.read_text())
    roots = {root.relative_to(ROOT) for root in kustomize_roots()}
    for parameters in parameter_sets(p):
        run = Run(p, parameters, answers={s["name"]: "promote" for s in p["stages"] if s["type"] == "manualJudgment"})
        for stage in run.ran.values():
            if stage["type"] != "bakeManifest":
                continue
            assert stage["templateRenderer"] == "KUSTOMIZE4"
            (source,) = stage["inputArtifacts"]
            assert source["artifact"]["type"] == "git/repo" and source["artifact"]["version"] == parameters["gitRef"]
            directory = Path(stage["kustomizeFilePath"])
            assert directory.name == "kustomization.yaml" and directory.parent in roots, stage["kustomizeFilePath"]
            (expected,) = stage["expectedArtifacts"]
            assert expected["id"] == f"baked-{stage['outputName']}"
            assert expected["matchArtifact"] == {"type": "embedded/base64", "kind": "base64",
                                                 "name": stage["outputName"]}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_deploy_and_job_sends_a_baked_root_whose_placeholders_the_pipeline_defines(path: Path) -> None:
    p = json.loads(path.read_text())
    for parameters in parameter_sets(p):
        run = Run(p, parameters, answers={s["name"]: "promote" for s in p["stages"] if s["type"] == "manualJudgment"})
        for ref, stage in run.ran.items():
            if stage["type"] not in ("deployManifest", "runJobManifest"):
                continue
            assert stage["source"] == "artifact" and "manifestArtifact" not in stage
            # Their manifests hold placeholders: evaluated, and a missing value fails the stage.
            assert stage["skipExpressionEvaluation"] is False and stage["failOnFailedExpressions"] is True
            bake = run.bake_of(ref, stage["manifestArtifactId"])
            root = kustomized(ROOT / Path(bake["kustomizeFilePath"]).parent)
            defined = set(run.variables(ref))
            missing = render_module().placeholders(root) - defined
            assert not missing, f"{ref}: no Evaluate Variables stage upstream defines {missing}"
            if stage["type"] == "runJobManifest":
                assert [d["kind"] for d in stage["manifests"]].count("Job") == 1
                assert {d["kind"] for d in stage["manifests"]} <= {"Job", "ConfigMap"}
                if "propertyFile" in stage:
                    assert [c["name"] for c in containers(run.job(ref))] == [stage["propertyFile"]]


def object_key(manifest_name: str) -> tuple[str, str]:
    kind, name = manifest_name.split(" ", 1)
    return kind.split(".", 1)[0].lower(), name


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_object_a_stage_finds_scales_patches_or_deletes_is_one_the_manifests_declare(path: Path) -> None:
    p = json.loads(path.read_text())
    for parameters in parameter_sets(p):
        values = {"modelVersion": parameters.get("modelVersion", "7")}
        objects = {(doc["kind"].lower(), doc["metadata"]["name"]) for _, doc in all_documents(**values)}
        run = Run(p, parameters, answers={s["name"]: "promote" for s in p["stages"] if s["type"] == "manualJudgment"})
        for stage in run.ran.values():
            if "manifestName" in stage:
                assert object_key(stage["manifestName"]) in objects, f"{stage['refId']}: {stage['manifestName']}"
            if stage["type"] == "patchManifest":
                # KEDA's kind, group-qualified as Spinnaker names a custom resource; merge patch
                # (a custom resource has no strategic-merge schema).
                assert stage["manifestName"].startswith("scaledObject.keda.sh worker-")
                assert stage["options"]["mergeStrategy"] == "merge"


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_image_a_pipeline_deploys_is_bound_to_a_build_of_this_repository(path: Path) -> None:
    p = json.loads(path.read_text())
    for expected in p["expectedArtifacts"]:
        match = expected["matchArtifact"]
        if match["type"] == "docker/image":
            assert match["name"] in IMAGES and (ROOT / IMAGES[match["name"]]).is_file(), match["name"]
    for trigger in p["triggers"]:
        if trigger["type"] == "docker":
            assert f"{trigger['registry']}/{trigger['repository']}" in IMAGES
    parameters = parameter_sets(p)[0]
    run = Run(p, parameters, answers={s["name"]: "promote" for s in p["stages"] if s["type"] == "manualJudgment"})
    for ref, stage in run.ran.items():
        for doc in stage.get("manifests", []):
            for c in containers(doc):
                name = image_name(c["image"])
                if not name.startswith("registry.example.com/"):
                    continue
                assert name in IMAGES, c["image"]
                # Bound to the triggering build, or to what runs now (a find stage upstream).
                bound = {e["matchArtifact"]["name"] for e in p["expectedArtifacts"]
                         if e["id"] in stage.get("requiredArtifactIds", [])}
                finders = [a for a in ancestors(p, ref) if stages(p)[a]["type"] == "findArtifactsFromResource"]
                assert name in bound or finders, f"{ref}: nothing binds {name}"


# --- model-rollout: a rollout that judges itself ------------------------------------------

ROLLOUT_PARAMETERS = {"modelVersion": "3", "targetColor": "green", "minWorkers": "2", "maxWorkers": "8",
                      "shadowFraction": "0.1", "shadowSoakSeconds": "1800", "canaryWeight": "0.1", "minJobs": "50",
                      "judgeTimeoutSeconds": "7200", "guardWindowSeconds": "1800", "gitRef": "main"}
CLI = ["python3", "-m", "models_registry"]


def rollout(verdict: str, override: str | None = None, failing: frozenset[str] = frozenset()) -> Run:
    """A model-rollout run whose judge says VERDICT; OVERRIDE is what a person answers if asked;
    the Jobs of the stages in FAILING exit 1."""
    p = pipeline("model-rollout")
    assert {q["name"] for q in p["parameterConfig"]} == set(ROLLOUT_PARAMETERS)
    answers = {stages(p)["override"]["name"]: override} if override else {}
    return Run(p, ROLLOUT_PARAMETERS, verdict=verdict, answers=answers, failing=failing)


def test_the_rollout_deploys_waits_verifies_shadows_soaks_canaries_then_judges() -> None:
    p = pipeline("model-rollout")
    order = ["bake-workers", "deploy", "scaling", "wait-ready", "verify", "shadow", "soak", "canary", "judge",
             "decide", "promote", "drain-previous", "guard-window", "check-active", "scale-down-previous"]
    for earlier, later in itertools.pairwise(order):
        assert earlier in ancestors(p, later), f"{earlier} must come before {later}"
    for earlier, later in itertools.pairwise(["judge", "decide", "abort", "scale-down-new"]):
        assert earlier in ancestors(p, later)
    assert {"scale-down-previous", "scale-down-new"} <= set(ancestors(p, "outcome"))
    s = stages(p)
    assert s["bake-workers"]["kustomizeFilePath"] == "k8s/workers/${parameters.targetColor}/kustomization.yaml"
    assert s["soak"]["type"] == "wait" and s["soak"]["waitTime"] == "${parameters.shadowSoakSeconds}"
    judge = s["judge"]
    assert judge["propertyFile"] == "judge"
    job = next(d for d in rendered(K8S / "jobs" / "judge") if d["kind"] == "Job")
    # The judge waits inside its Job; neither the Job's deadline nor the stage's timeout cuts it short.
    default_wait = int(next(q["default"] for q in p["parameterConfig"] if q["name"] == "judgeTimeoutSeconds"))
    assert default_wait + 600 < job["spec"]["activeDeadlineSeconds"] < judge["stageTimeoutMs"] / 1000


def test_a_promote_verdict_promotes_drains_the_old_color_and_lets_keda_retire_it_without_a_person() -> None:
    run = rollout("promote")
    assert run.asked == [], "no manual step on the happy path"
    assert set(run.skipped) == {"override", "abort", "scale-down-new"}
    # The green workers with version 3, their image the one blue runs (found upstream).
    deployed = {d["kind"]: d for d in run.ran["deploy"]["manifests"] if d["kind"] != "ConfigMap"}
    assert deployed["Deployment"]["metadata"]["name"] == "worker-green"
    assert deployed["Deployment"]["metadata"]["labels"]["model-version"] == "3"
    assert deployed["ScaledObject"]["spec"]["triggers"][0]["metadata"]["listName"] == "recognize.3"
    assert run.ran["find-active"]["manifestName"] == "deployment worker-blue"
    # KEDA's limits from the parameters, as integers; then wait until the minimum is ready.
    assert run.ran["scaling"]["manifestName"] == "scaledObject.keda.sh worker-green"
    assert run.ran["scaling"]["patchBody"] == {
        "metadata": {"annotations": {"autoscaling.keda.sh/paused-replicas": None}},  # a merge patch's delete
        "spec": {"minReplicaCount": 2, "maxReplicaCount": 8}}
    assert run.ran["wait-ready"]["manifestName"] == "deployment worker-green"
    assert run.ran["wait-ready"]["replicas"] == "2"
    assert run.ran["verify"]["manifests"][-1]["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "3"
    assert run.command("shadow") == CLI + ["shadow", "3", "--fraction", "0.1"]
    assert run.ran["soak"]["waitTime"] == "1800"
    assert run.command("canary") == CLI + ["canary", "3", "--weight", "0.1"]
    assert run.command("judge") == CLI + ["judge", "3", "--min-jobs", "50", "--wait", "7200", "--interval", "60",
                                          "--report-only"]
    assert run.ran["decide"]["outputs"] == {"decision": "promote"}
    assert run.command("promote") == CLI + ["promote", "3"]
    # Blue served version 1 (its label in the cluster): wait for its queue, then its minimum goes to 0.
    assert run.command("drain-previous") == ["/app/docker/bin/wait-queue-drained", "1", "--timeout", "3600"]
    # Blue keeps its workers for the guard window, so the guard has a version to roll back to;
    # then version 3 is still active, and only then may KEDA take blue to 0.
    assert run.ran["guard-window"]["type"] == "wait" and run.ran["guard-window"]["waitTime"] == "1800"
    check = run.ran["check-active"]
    assert check["name"] == "Is version 3 still active?"
    assert run.job("check-active")["metadata"]["name"] == "model-check-active"
    (container,) = containers(run.job("check-active"))
    assert container["name"] == "check-active"
    assert container["command"][:2] == ["python3", "-c"] and container["command"][-1] == "3"
    assert check["status"] == "SUCCEEDED"
    ran = list(run.ran)
    assert ran.index("drain-previous") < ran.index("guard-window") < ran.index("check-active") \
        < ran.index("scale-down-previous") < ran.index("outcome")
    assert run.ran["scale-down-previous"]["manifestName"] == "scaledObject.keda.sh worker-blue"
    assert run.ran["scale-down-previous"]["patchBody"] == {"spec": {"minReplicaCount": 0}}
    assert run.ran["outcome"]["passed"] is True
    assert run.status == "SUCCEEDED" and run.not_started == []


def test_the_previous_color_keeps_its_workers_until_the_guard_window_is_over() -> None:
    p = pipeline("model-rollout")
    s = stages(p)
    # The only way to the previous color's scale-down is through the window and the check.
    assert s["scale-down-previous"]["requisiteStageRefIds"] == ["check-active"]
    assert s["check-active"]["requisiteStageRefIds"] == ["guard-window", "bake-check-active"]
    assert s["guard-window"]["requisiteStageRefIds"] == ["drain-previous"]
    assert s["guard-window"]["type"] == "wait" and s["guard-window"]["waitTime"] == "${parameters.guardWindowSeconds}"
    for ref in ("guard-window", "check-active", "scale-down-previous"):
        assert s[ref]["stageEnabled"] == {"type": "expression", "expression": "decision == 'promote'"}, ref
    # A failed check halts the whole pipeline (Orca's "halt the entire pipeline").
    assert s["check-active"]["failPipeline"] is True and s["check-active"]["continuePipeline"] is False
    assert s["bake-check-active"]["kustomizeFilePath"] == "k8s/jobs/check-active/kustomization.yaml"
    # The window outlasts what the guard judges on (its --window after the promote) and a few checks.
    window = next(q for q in p["parameterConfig"] if q["name"] == "guardWindowSeconds")
    assert window["default"] == "1800" and window["description"]
    guard = next(d for d in rendered(K8S / "guard") if d["kind"] == "Deployment")
    (command,) = [c["command"] for c in containers(guard)]
    judged = command[command.index("--window") + 1]
    judged_seconds = int(judged[:-1]) * {"s": 1, "m": 60, "h": 3600}[judged[-1]]
    interval = float(command[command.index("--interval") + 1])
    assert int(window["default"]) >= judged_seconds + 4 * interval


def test_a_version_the_guard_rolled_back_in_the_window_stops_the_run_before_the_old_color_goes_to_0() -> None:
    run = rollout("promote", failing=frozenset({"check-active"}))
    assert run.asked == []
    assert {"promote", "drain-previous", "guard-window", "check-active"} <= set(run.ran)
    assert run.ran["check-active"]["status"] == "TERMINAL"
    # Blue serves again (the guard's rollback): its ScaledObject is left as it is, so KEDA keeps
    # its minimum; the run ends there, red.
    assert run.failed == "check-active" and run.status == "TERMINAL"
    assert "scale-down-previous" in run.not_started and "outcome" in run.not_started
    assert not [ref for ref, s in run.ran.items() if s.get("manifestName") == "scaledObject.keda.sh worker-blue"]
    assert all(s["type"] != "patchManifest" for ref, s in run.ran.items() if ref != "scaling")


def test_a_rollback_verdict_aborts_the_candidate_and_retires_its_workers_and_fails_the_run() -> None:
    run = rollout("rollback")
    assert run.asked == []
    assert set(run.skipped) == {"override", "promote", "drain-previous", "guard-window", "check-active",
                                "scale-down-previous"}
    assert run.command("abort") == CLI + ["abort", "3", "--reason", "judge"]
    assert run.ran["scale-down-new"]["manifestName"] == "scaledObject.keda.sh worker-green"
    assert run.ran["scale-down-new"]["patchBody"] == {"spec": {"minReplicaCount": 0}}
    # Shown red in Spinnaker (and its notifications): the candidate did not make it.
    assert run.ran["outcome"]["passed"] is False
    assert run.failed == "outcome" and run.status == "TERMINAL"


@pytest.mark.parametrize("answer", ["promote", "rollback"])
def test_a_verdict_still_wait_at_the_timeout_asks_a_person_to_promote_or_abort(answer: str) -> None:
    run = rollout("wait", override=answer)
    override = stages(pipeline("model-rollout"))["override"]
    assert run.asked == [override["name"]]
    assert [i["value"] for i in override["judgmentInputs"]] == ["promote", "rollback"]
    assert run.ran["decide"]["outputs"] == {"decision": answer}
    if answer == "promote":
        assert "promote" in run.ran and "abort" in run.skipped
    else:
        assert "abort" in run.ran and "promote" in run.skipped


@pytest.mark.integration
def test_the_check_active_job_passes_while_the_version_is_active_and_fails_once_the_guard_rolled_it_back(
        tmp_path: Path) -> None:
    """The check-active Job's own command, started as the kubelet would (the API image's ENV, its
    ConfigMap, its redis-url file), against a real Redis holding the rollout state."""
    import redis

    from harness import start_redis
    from models_registry.rollout import model_version_promote, model_version_rollback

    documents = rendered(K8S / "jobs" / "check-active", modelVersion="3")
    job, name, dockerfile = one(documents, "Job"), "check-active", ROOT / "Dockerfile.api"
    process, url = start_redis(tmp_path / "redis")
    client = redis.Redis.from_url(url)
    try:
        paths = PathMap({"/app": ROOT, "/tmp": tmp_path / "tmp", "/run/secrets/recognition": tmp_path / "secrets"})
        secrets = {"recognition-secrets": {"redis-url": url}}
        secret_files(job, name, secrets, paths)
        env = container_env(job, name, image=image_env(dockerfile), configmaps=configmaps(documents), secrets=secrets)
        env = {key: paths(value) for key, value in env.items()}
        env |= base_env(f"{Path(sys.executable).parent}:/usr/bin:/bin")
        argv = [paths(arg) for arg in container_argv(job, name, env, image_json_argv(dockerfile, "CMD"))]
        prefix, default = env["REDIS_KEY_PREFIX"], env["DEFAULT_MODEL_VERSION"]
        assert default == "1"

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

        model_version_promote(client, prefix=prefix, version="3", default_version=default, force=True,
                              by="model-rollout")
        kept = check()
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert "version 3 is still active after the guard window" in kept.stdout
        model_version_rollback(client, prefix=prefix, default_version=default, by="guard rollout-guard-0",
                               force=True, reason="guard: version 3 degraded against 1's figures: error rate")
        rolled_back = check()
        assert rolled_back.returncode == 1, rolled_back.stdout + rolled_back.stderr
        assert "version 3 is no longer active: it was rolled back to version 1" in rolled_back.stderr
        assert "last change by guard rollout-guard-0" in rolled_back.stderr
        # The history, with the guard's reason, is in the Job's log (the stage's log in Spinnaker).
        assert "reason: guard: version 3 degraded against 1's figures" in rolled_back.stdout
    finally:
        client.close()
        process.kill()


def test_the_rollout_on_blue_takes_green_down_after_the_promote() -> None:
    p = pipeline("model-rollout")
    run = Run(p, {**ROLLOUT_PARAMETERS, "targetColor": "blue"})
    assert run.ran["deploy"]["manifests"][-1]["metadata"]["name"] == "worker-redis-blue"
    assert run.command("drain-previous")[1] == "2"
    assert run.ran["scale-down-previous"]["manifestName"] == "scaledObject.keda.sh worker-green"


# --- the other pipelines ------------------------------------------------------------------

def test_the_rollback_pipeline_restores_a_color_judges_rolls_back_then_retires_the_other() -> None:
    p = pipeline("model-rollback")
    for earlier, later in itertools.pairwise(["scaling", "scale-up", "status-before", "judge-rollback", "rollback",
                                              "drain-other", "scale-down-other"]):
        assert earlier in ancestors(p, later)
    judgment = stages(p)["judge-rollback"]["name"]
    run = Run(p, {"restoreColor": "blue", "minWorkers": "2", "maxWorkers": "8", "gitRef": "main"},
              answers={judgment: "continue"})
    assert run.asked == ["Roll back to the blue version?"]
    assert run.ran["scaling"]["patchBody"]["spec"] == {"minReplicaCount": 2, "maxReplicaCount": 8}
    assert run.ran["scale-up"]["manifestName"] == "deployment worker-blue"
    assert run.command("status-before") == CLI + ["status"]
    assert run.command("rollback") == CLI + ["rollback"]
    assert run.command("drain-other") == ["/app/docker/bin/wait-queue-drained", "2", "--timeout", "3600"]
    assert run.ran["scale-down-other"]["manifestName"] == "scaledObject.keda.sh worker-green"
    assert run.ran["scale-down-other"]["patchBody"] == {"spec": {"minReplicaCount": 0}}


def test_a_model_volume_is_populated_and_verified_before_its_writable_claim_is_deleted() -> None:
    p = pipeline("model-volume")
    for earlier, later in itertools.pairwise(["volumes", "populate", "drop-writable-claim", "drop-writable-volume"]):
        assert earlier in ancestors(p, later)
    run = Run(p, {"modelVersion": "12", "gitRef": "main"})
    names = {(d["kind"], d["metadata"]["name"]) for d in run.ran["volumes"]["manifests"]}
    assert names == {("PersistentVolume", "model-reference-12"), ("PersistentVolumeClaim", "model-reference-12"),
                     ("PersistentVolume", "model-reference-12-populate"),
                     ("PersistentVolumeClaim", "model-reference-12-populate")}
    assert [c["command"][-1] for c in containers(run.job("populate"))] == ["12", "12"]
    assert run.ran["drop-writable-claim"]["manifestName"] == "persistentvolumeclaim model-reference-12-populate"
    assert run.ran["drop-writable-volume"]["manifestName"] == "persistentvolume model-reference-12-populate"


def test_the_code_deploy_rolls_the_api_the_guard_and_both_colors_with_the_versions_they_serve() -> None:
    p = pipeline("code-deploy")
    run = Run(p, {"gitRef": "main"})
    deployed = {ref: {(d["kind"], d["metadata"]["name"]): d for d in s["manifests"]}
                for ref, s in run.ran.items() if s["type"] == "deployManifest"}
    assert ("Deployment", "recognition-api") in deployed["api"]
    assert ("Deployment", "rollout-guard") in deployed["guard"]
    for color, version in (("blue", "1"), ("green", "2")):
        deployment = deployed[f"worker-{color}"][("Deployment", f"worker-{color}")]
        # The version each color serves now (its label in the cluster): the same volume.
        assert deployment["metadata"]["labels"]["model-version"] == version
        claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        assert claim == f"model-reference-{version}"
        assert run.ran[f"worker-{color}"]["requiredArtifactIds"] == ["worker-image"]
    assert run.ran["api"]["requiredArtifactIds"] == run.ran["guard"]["requiredArtifactIds"] == ["api-image"]
    assert not any("models" in s.get("kustomizeFilePath", "") for s in run.ran.values()), "no new volume"
    assert {e["matchArtifact"]["name"] for e in p["expectedArtifacts"]} == set(IMAGES)
    assert all(e["usePriorArtifact"] for e in p["expectedArtifacts"]), "one image alone may trigger it"
