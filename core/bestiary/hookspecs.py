"""The hooks a bestiary plugin implements.

A plugin is a module named by an entry point in the group ``bestiary.plugins``.
Its hook implementations return declarations (pydantic specs holding
``"module:Class"`` strings), never classes, so discovering every installed
plugin imports no model code and no torch.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "bestiary"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def bestiary_architectures():  # -> list[ArchitectureSpec]
    """Return the architectures this plugin provides.

    Each item is an :class:`bestiary.registry.ArchitectureSpec` naming a
    ``model_type`` and, as lazy ``"module:Class"`` references, its config
    class, one model class (or several) per task, and its processors.
    """


@hookspec
def bestiary_pipelines():  # -> list[PipelineSpec]
    """Return the pipeline tasks this plugin adds.

    Each item is a :class:`bestiary.registry.PipelineSpec` naming a task
    (``"keypoint-matching"``), the ``"module:Class"`` of its pipeline, and the
    model task it loads models for.
    """
