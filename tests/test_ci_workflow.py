"""The hosted CI workflow (.github/workflows/ci.yml): valid against the GitHub workflow schema that
check-jsonschema vendors (offline), runs the README's test command, and publishes only on tags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
TEST_COMMAND = "bash scripts/test.sh"


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(tool), "--builtin-schema", "vendor.github-workflows", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def test_the_workflow_is_valid() -> None:
    result = check_jsonschema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = workflow()
    broken["jobs"]["test"]["runs_on"] = broken["jobs"]["test"].pop("runs-on")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_jsonschema(path).returncode != 0


def test_ci_runs_the_readme_test_command() -> None:
    assert f"    {TEST_COMMAND}\n" in (ROOT / "README.md").read_text()
    steps = workflow()["jobs"]["test"]["steps"]
    assert [s["run"] for s in steps if "Test" in s.get("name", "")] == [TEST_COMMAND]
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_the_image_is_built_after_the_tests_and_published_on_tags_only() -> None:
    jobs = workflow()["jobs"]
    image = jobs["image"]
    assert image["needs"] == "test"
    assert any("scripts/image.sh" in s.get("run", "") for s in image["steps"])
    pushing = [s for s in image["steps"] if "podman push" in s.get("run", "")]
    assert pushing
    for step in pushing:
        assert step["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert image["permissions"]["packages"] == "write"
    # YAML reads the bare key `on` as True
    triggers = workflow()[True]
    assert triggers["push"]["tags"] == ["v*.*.*"]
