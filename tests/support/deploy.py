"""What the repository deploys, read from its files: the Kubernetes manifests, the image tags
`make build` gives and the routes the agent answers."""

import re

import yaml

from support.lessons import ROOT


def load_manifests() -> list[dict]:
    """Every document of code/lesson06/k8s/*.yaml, each with the file it came from in
    metadata._file."""
    docs = []
    for path in sorted((ROOT / "code" / "lesson06" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                doc.setdefault("metadata", {})["_file"] = path.name
                docs.append(doc)
    return docs


def built_tags() -> set[str]:
    """The tags `make build` gives: research-agent:<variant> for each variant of build-images.sh."""
    script = (ROOT / "scripts" / "build-images.sh").read_text(encoding="utf-8")
    assert "tag=research-agent:$variant" in script
    variants = re.search(r"\[ \$# -gt 0 \] \|\| set -- ([\w ]+)", script).group(1).split()
    return {f"research-agent:{v}" for v in variants}


def get_paths() -> set[str]:
    """The GET routes of the research agent, from its OpenAPI schema."""
    from research_agent.app import create_app
    from research_agent.settings import Settings

    schema = create_app(Settings()).openapi()
    return {path for path, ops in schema["paths"].items() if "get" in ops}
