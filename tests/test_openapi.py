"""docs/openapi.yaml is valid OpenAPI and describes the app exactly: every route, method, role, parameter, code.

The app's routes are the native routes of the hot requests (``hraftd.keys.ENDPOINTS``) and the Flask app's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from werkzeug import exceptions

from hraftd import app as node_app
from hraftd import connection, errors, keys, protocol, txnbody, watch, web
from hraftd.eventwindow import EventWindow
from hraftd.metrics import NodeMetrics

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# The werkzeug errors the app can raise or meet; _http_error turns their names into codes.
HTTP_ERRORS = (exceptions.NotFound, exceptions.MethodNotAllowed, exceptions.BadRequest)


class FakeStore:
    """Just enough of the Store protocol to build the app; nothing here is called by these tests."""

    node_id = "fake"
    timeout = 1.0
    applied_index = 0
    revision = 0

    def __init__(self) -> None:
        self.event_window = EventWindow()

    def sync_reads_async(self, level: str, done: Any) -> None:
        done(None)

    def read_item(self, key: str) -> Any:
        return None

    def read_page(self, prefix: str, start_after: str | None, limit: int | None, keys_only: bool) -> Any:
        return 1, [], False

    def read_count(self, prefix: str) -> tuple[int, int]:
        return 1, 0

    def submit(self, command: dict[str, Any], done: Any) -> None:
        results = {"put": {"revision": 1}, "delete": {"deleted": False, "revision": 1},
                   "delete_prefix": {"deleted": 0, "revision": 1}, "txn": {"succeeded": True, "revision": 1,
                                                                          "results": []}}
        done(results[command["op"]], None)

    def add_member(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def remove_member(self, node_id: str) -> None: ...

    def status(self) -> dict[str, Any]:
        return {}

    def __getattr__(self, name: str) -> Any:  # whatever the store grows later (health checks, metrics)
        return lambda *args, **kwargs: None


# ----- helpers, also used by test_fuzz.py -----


def resolve(node: Any, spec: dict[str, Any] = SPEC) -> Any:
    """Follow local $refs (``#/a/b``) until ``node`` is not a reference."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            raise AssertionError(f"circular $ref {ref}")
        seen.add(ref)
        assert ref.startswith("#/"), f"only local references are used: {ref}"
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
            node = node[part]
    return node


def codes_of(response: Any, spec: dict[str, Any] = SPEC) -> set[str]:
    """The error codes a response object documents: the enum of ``code`` in its JSON schema."""
    response = resolve(response, spec)
    schema = resolve(response.get("content", {}).get("application/json", {}).get("schema", {}), spec)
    found: set[str] = set()
    for part in [schema, *schema.get("allOf", [])]:
        code = resolve(part, spec).get("properties", {}).get("code", {})
        found |= set(code.get("enum", [])) | ({code["const"]} if "const" in code else set())
    return found


def spec_path(rule: str) -> str:
    """Flask's ``/key/<key:key>`` is OpenAPI's ``/key/{key}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def operations(spec: dict[str, Any] = SPEC) -> dict[tuple[str, str], dict[str, Any]]:
    """(path, METHOD) -> operation object."""
    return {(path, method.upper()): operation for path, item in spec["paths"].items()
            for method, operation in item.items() if method in METHODS}


def documented_codes(path: str | None, method: str, status: int, spec: dict[str, Any] = SPEC) -> set[str]:
    """The codes the spec allows for this answer; ``path`` None: a request that matched no route."""
    if path is None:
        components = spec["components"]["responses"]
        by_status = {400: "BadHost", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
                     408: "RequestTimeout", 413: "PayloadTooLarge", 414: "UriTooLong", 431: "HeadersTooLarge",
                     503: "Busy"}
        return codes_of(components[by_status[status]], spec) if status in by_status else set()
    response = operations(spec)[(path, method)]["responses"].get(str(status))
    return codes_of(response, spec) if response is not None else set()


def all_spec_codes(spec: dict[str, Any] = SPEC) -> set[str]:
    codes: set[str] = set()
    for response in spec["components"]["responses"].values():
        codes |= codes_of(response, spec)
    for operation in operations(spec).values():
        for response in operation["responses"].values():
            codes |= codes_of(response, spec)
    return codes


def flask_app() -> Any:
    store = FakeStore()
    return web.create_app(store, metrics=NodeMetrics(store))


def app_routes() -> dict[str, set[str]]:
    """OpenAPI path -> methods of the app's routes, without the HEAD and OPTIONS that Flask adds itself."""
    routes: dict[str, set[str]] = {}
    for rule in flask_app().url_map.iter_rules():
        methods = set(rule.methods or ())
        if getattr(rule, "provide_automatic_options", False):
            methods.discard("OPTIONS")
        if "GET" in methods:
            methods.discard("HEAD")
        routes.setdefault(spec_path(rule.rule), set()).update(methods)
    for route, method in keys.ENDPOINTS:
        routes.setdefault(spec_path(route), set()).add(method)
    return routes


def app_endpoints() -> dict[tuple[str, str], str]:
    """(OpenAPI path, METHOD) -> endpoint name, as in hraftd.protocol's rules."""
    endpoints = {(spec_path(rule.rule), method): rule.endpoint.removeprefix("api.")
                 for rule in flask_app().url_map.iter_rules() for method in rule.methods or ()}
    endpoints.update({(spec_path(route), method): endpoint for (route, method), endpoint in keys.ENDPOINTS.items()})
    return endpoints


def source_codes() -> set[str]:
    """Every error code the source can put in a body."""
    codes: set[str] = set()
    modules = (web, protocol, keys, txnbody, watch, node_app, connection)
    sources = (Path(module.__file__).read_text() for module in modules)
    for node in (node for source in sources for node in ast.walk(ast.parse(source))):
        name = getattr(node.func, "id", getattr(node.func, "attr", None)) if isinstance(node, ast.Call) else None
        if name in ("BadRequest", "_error", "error_document", "Refused", "refuse"):
            code = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "code"), None)
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                codes.add(code.value)
        if isinstance(node, ast.ClassDef) and node.name == "BadRequest":  # the default code of BadRequest
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            codes |= {d.value for d in init.args.defaults if isinstance(d, ast.Constant) and isinstance(d.value, str)}
    for node in ast.walk(ast.parse(Path(errors.__file__).read_text())):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                targets = [getattr(target, "id", None) for target in getattr(statement, "targets", [])]
                if "code" in targets and isinstance(statement.value, ast.Constant):
                    codes.add(statement.value.value)
    codes |= {error().name.lower().replace(" ", "_") for error in HTTP_ERRORS}
    return codes


# ----- the spec is well-formed -----


def test_the_spec_parses_and_has_the_top_level_fields():
    assert str(SPEC["openapi"]).startswith("3.")
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    assert SPEC["paths"]


def test_the_spec_is_valid_openapi():
    validate(SPEC)


def test_every_ref_resolves():
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
                resolve(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(SPEC)
    assert len(refs) > 20


def test_every_component_is_used_or_explains_why_not():
    text = SPEC_PATH.read_text()
    for kind, components in SPEC["components"].items():
        for name, component in components.items():
            if f"#/components/{kind}/{name}'" not in text and kind != "securitySchemes":
                assert "Not referenced" in component.get("description", ""), f"{kind}/{name} is unused"


# ----- the spec and the app agree -----


def test_every_route_of_the_app_is_described_with_its_methods():
    described = {path: {m.upper() for m in item if m in METHODS} for path, item in SPEC["paths"].items()}
    for path, methods in app_routes().items():
        assert path in described, f"the app serves {path} {sorted(methods)}, the spec does not describe it"
        assert described[path] == methods, f"{path}: the app has {sorted(methods)}, the spec {sorted(described[path])}"


def test_every_path_of_the_spec_exists_in_the_app():
    routes = app_routes()
    for path in SPEC["paths"]:
        assert path in routes, f"the spec describes {path}, the app has no such route"


def test_roles_match_the_app():
    for (path, method), operation in operations().items():
        endpoint = app_endpoints()[(path, method)]
        needed = protocol.ROLE_OF_ENDPOINT.get(endpoint)
        requirements = operation.get("security", SPEC.get("security", []))
        roles = {role for requirement in requirements for role in requirement.get("bearerAuth", [])}
        if needed is None:
            assert not roles and operation.get("x-hraftd-role") is None, f"{method} {path} needs no token"
            assert "401" not in operation["responses"] and "403" not in operation["responses"]
        else:
            assert roles == {needed} and operation.get("x-hraftd-role") == needed, f"{method} {path}: {needed}"
            assert {} in requirements, f"{method} {path}: a node without -auth-file needs no token"
            assert "401" in operation["responses"] and "403" in operation["responses"]
            assert codes_of(operation["responses"]["401"]) == {"unauthorized"}
            assert "forbidden" in codes_of(operation["responses"]["403"])


def test_query_parameters_match_the_app():
    for (path, method), operation in operations().items():
        endpoint = app_endpoints()[(path, method)]
        parameters = [resolve(p) for p in SPEC["paths"][path].get("parameters", []) + operation.get("parameters", [])]
        query = {p["name"] for p in parameters if p["in"] == "query"}
        assert query == protocol.PARAMETERS_OF_ENDPOINT.get(endpoint, set()), f"{method} {path}"
        if "unknown_parameter" not in documented_codes(path, method, 400):
            pytest.fail(f"{method} {path} refuses unknown query parameters: document 400 unknown_parameter")
    level = next(p for p in operations()[("/key/{key}", "GET")]["parameters"] if p["name"] == "level")
    assert tuple(level["schema"]["enum"]) == protocol.READ_LEVELS


def test_path_parameters_are_declared():
    for path, item in SPEC["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for method in (m for m in item if m in METHODS):
            parameters = [resolve(p) for p in item.get("parameters", []) + item[method].get("parameters", [])]
            assert {p["name"] for p in parameters if p["in"] == "path"} == names, f"{method} {path}"


def test_every_error_code_of_the_source_is_in_the_spec():
    codes = source_codes()
    assert {"bad_json", "key_not_found", "unknown_member", "outcome_unknown", "busy", "not_found"} <= codes
    missing = codes - all_spec_codes()
    assert not missing, f"codes the source can send that the spec does not mention: {sorted(missing)}"


def test_every_code_in_the_spec_exists_in_the_source():
    stale = all_spec_codes() - source_codes()
    assert not stale, f"codes in the spec that the source never sends: {sorted(stale)}"


def test_every_error_response_has_the_error_body_and_the_node_headers():
    for (path, method), operation in operations().items():
        assert "200" in operation["responses"], f"{method} {path}"
        for status, response in operation["responses"].items():
            response = resolve(response)
            if int(status) >= 400:
                schema = resolve(response["content"]["application/json"]["schema"])
                assert {"$ref": "#/components/schemas/Error"} in schema.get("allOf", []), f"{method} {path} {status}"
                assert codes_of(response), f"{method} {path} {status} lists no code"
            headers = response.get("headers", {})
            assert {"X-Hraftd-Node", "X-Raft-Index"} <= set(headers), f"{method} {path} {status}"
            if status == "503":
                assert "Retry-After" in headers
            if status == "401":
                assert "WWW-Authenticate" in headers
            if status == "405":
                assert "Allow" in headers
        for status in ("405", "500", "503"):
            assert status in operation["responses"], f"{method} {path} lacks {status}"


def test_the_native_router_answers_by_its_table():
    handlers = keys.KeyHandlers(FakeStore(), None, None)
    for (route, method), endpoint in keys.ENDPOINTS.items():
        path = "/key/some/key" if route == keys.KEY_ROUTE else route
        assert handlers.route(method, path)[:2] == (route, endpoint)
        assert handlers.route(method, path)[2] == getattr(handlers, endpoint)
    assert handlers.route("HEAD", "/keys")[1] == "list_keys" and handlers.route("HEAD", "/key/x")[1] == "get_key"
    for method, path in [("PUT", "/key"), ("GET", "/key"), ("POST", "/key/x"), ("PATCH", "/key/x"), ("POST", "/keys"),
                         ("GET", "/txn"), ("DELETE", "/txn")]:
        assert handlers.route(method, path)[1:] == (None, None), (method, path)
    for path in ["/key/", "/keys/", "/txn/", "/status", "//key/x", "/KEY/x", "/keys/x"]:
        assert handlers.route("GET", path) is None, path
