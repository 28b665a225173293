"""The OpenAPI 3.1 document, generated from the application's router and the models its handlers use.

Each handler declares its operation beside itself (``@operation``): summary, path and query models,
request body, and per status the models or media types it answers with. ``build_document`` walks
``app.router.routes()`` for methods, paths and path parameters, and takes every schema from pydantic
(``models_json_schema``), so a route without a declaration, or a declaration whose path parameters
differ from the route's, stops start-up instead of being served wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import AbstractRoute, StaticResource
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from vcstream.service.schemas import ErrorBody

REF_TEMPLATE = "#/components/schemas/{model}"
_HANDLER_ATTRIBUTE = "__vcstream_operation__"
_PATH_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class Media:
    """A body that is not a JSON model: its media type and (JSON Schema) schema."""

    media_type: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Reply:
    """One documented status: a sentence, and the bodies it may carry (none for 101/204)."""

    description: str
    bodies: tuple[type[BaseModel] | Media, ...] = ()


def reply(description: str, *bodies: type[BaseModel] | Media) -> Reply:
    return Reply(description, bodies)


def error(description: str) -> Reply:
    return Reply(description, (ErrorBody,))


@dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    responses: Mapping[int, Reply]
    description: str | None = None
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    #: the request body: its media type and the model of its fields
    body: tuple[str, type[BaseModel]] | None = None


def operation(
    operation_id: str,
    summary: str,
    responses: Mapping[int, Reply],
    *,
    description: str | None = None,
    path: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    body: tuple[str, type[BaseModel]] | None = None,
) -> Callable[[H], H]:
    """Declare the handler's operation for the document (the handler itself is unchanged)."""
    declared = Operation(operation_id, summary, responses, description, path, query, body)

    def attach(handler: H) -> H:
        setattr(handler, _HANDLER_ATTRIBUTE, declared)
        return handler

    return attach


class UndocumentedRouteError(LookupError):
    """A route has no ``@operation``, or its declaration does not fit the route."""


class _StaticFilePath(BaseModel):
    filename: str


#: aiohttp's own handler for a static folder: a file below the prefix, or 404
_STATIC_FILE = Operation(
    operation_id="staticFile",
    summary="A file of the browser client",
    responses={
        200: reply("the file", Media("*/*")),
        # aiohttp's file response decides this after every middleware has run: no JSON error here
        404: reply("no such file (an empty body)"),
    },
    path=_StaticFilePath,
)

#: (model, mode) -> its reference under components (pydantic also keys dataclasses: Any)
_Refs = Mapping[tuple[Any, JsonSchemaMode], Mapping[str, Any]]


def _models(declared: Operation) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    """The models ``declared`` refers to under components, each in the mode it is described in."""
    found: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    if declared.body:
        found.append((declared.body[1], "validation"))
    for answer in declared.responses.values():
        found += [(body, "serialization") for body in answer.bodies if not isinstance(body, Media)]
    return found


def _parameters(location: str, model: type[BaseModel]) -> list[dict[str, Any]]:
    """One parameter per field of a flat model (no nested models: parameters have no components)."""
    schema = model.model_json_schema(mode="validation")
    if "$defs" in schema:
        raise UndocumentedRouteError(f"{model.__name__}: parameter models must be flat")
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": location, "required": location == "path" or name in required, "schema": spec}
        for name, spec in schema.get("properties", {}).items()
    ]


def _content(bodies: tuple[type[BaseModel] | Media, ...], refs: _Refs) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for body in bodies:
        if isinstance(body, Media):
            content[body.media_type] = {"schema": dict(body.schema)}
        else:
            content["application/json"] = {"schema": dict(refs[(body, "serialization")])}
    return content


def _describe(declared: Operation, path_names: list[str], refs: _Refs) -> dict[str, Any]:
    documented: dict[str, Any] = {"summary": declared.summary, "operationId": declared.operation_id}
    if declared.description:
        documented["description"] = declared.description
    parameters = _parameters("path", declared.path) if declared.path else []
    if [parameter["name"] for parameter in parameters] != path_names:
        raise UndocumentedRouteError(
            f"the route's path parameters {path_names} are declared as {[p['name'] for p in parameters]}"
        )
    if declared.query:
        parameters += _parameters("query", declared.query)
    if parameters:
        documented["parameters"] = parameters
    if declared.body:
        media_type, model = declared.body
        schema = dict(refs[(model, "validation")])
        documented["requestBody"] = {"required": True, "content": {media_type: {"schema": schema}}}
    documented["responses"] = {
        str(status): {"description": answer.description}
        | ({"content": _content(answer.bodies, refs)} if answer.bodies else {})
        for status, answer in sorted(declared.responses.items())
    }
    return documented


@dataclass(frozen=True)
class _Route:
    method: str
    path: str
    path_names: list[str]
    declared: Operation


def _documented_route(route: AbstractRoute) -> _Route:
    resource = route.resource
    if resource is None:
        raise UndocumentedRouteError(f"{route.method} route without a resource")
    if isinstance(resource, StaticResource):  # aiohttp's handler, not ours: described generically
        return _Route(route.method, f"{resource.canonical}/{{filename}}", ["filename"], _STATIC_FILE)
    path = resource.canonical
    declared = getattr(route.handler, _HANDLER_ATTRIBUTE, None)
    if not isinstance(declared, Operation):
        raise UndocumentedRouteError(f"{route.method} {path}: the handler has no @operation")
    return _Route(route.method, path, _PATH_PARAMETER.findall(path), declared)


def build_document(app: web.Application, info: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app`` (HEAD is implied by each GET)."""
    routes = [_documented_route(route) for route in app.router.routes() if route.method != hdrs.METH_HEAD]
    wanted = {model: None for route in routes for model in _models(route.declared)}  # ordered, unique
    refs, definitions = models_json_schema(list(wanted), ref_template=REF_TEMPLATE)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        try:
            described = _describe(route.declared, route.path_names, refs)
        except UndocumentedRouteError as exc:
            raise UndocumentedRouteError(f"{route.method} {route.path}: {exc}") from None
        paths.setdefault(route.path, {})[route.method.lower()] = described
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }
