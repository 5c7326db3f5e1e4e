"""The request bodies of the generation routes, published in ``/openapi.json``.

The routes read their bodies themselves (to bound their size and refuse bad JSON first), so
FastAPI cannot infer the schemas: they are added here from the pydantic models the routes validate
with, under ``components.schemas``, and each route's ``requestBody`` refers to its model.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


def publish_request_schemas(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """Make ``app.openapi()`` include the JSON schema of each route's body model."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in bodies.values():
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
