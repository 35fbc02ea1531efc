"""MkDocs hook: replace the support-table marker with a table generated from registry.yaml and the installed plugins."""

from __future__ import annotations

from pathlib import Path

import yaml

MARKER = "<!-- support-table -->"
CATALOG = Path(__file__).resolve().parents[2] / "registry.yaml"


def support_table() -> str:
    """Markdown table: one row per architecture, with its tasks, distribution and install state."""
    from bestiary.registry import list_architectures

    installed = {row["model_type"]: row for row in list_architectures()}
    catalog = yaml.safe_load(CATALOG.read_text())["plugins"]
    lines = ["| model_type | tasks | distribution | installed |", "| --- | --- | --- | --- |"]
    seen = set()
    for plugin in catalog:
        for model_type in plugin.get("model_types", []):
            row = installed.get(model_type)
            tasks = ", ".join(row["tasks"]) if row else ", ".join(plugin.get("tasks", []))
            lines.append(f"| `{model_type}` | {tasks} | `{plugin['distribution']}` | {'yes' if row else 'no'} |")
            seen.add(model_type)
    for model_type, row in sorted(installed.items()):
        if model_type not in seen:
            lines.append(f"| `{model_type}` | {', '.join(row['tasks'])} | `{row['distribution']}` (third party) | yes |")
    pipelines = ["", "| pipeline task | provided by |", "| --- | --- |"]
    for plugin in catalog:
        for task in plugin.get("pipelines", []):
            pipelines.append(f"| `{task}` | `{plugin['distribution']}` |")
    return "\n".join(lines + pipelines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Insert the generated table where a page asks for it."""
    return markdown.replace(MARKER, support_table()) if MARKER in markdown else markdown
