"""An OpenAPI 3 description of the scoring API, with the row schema taken from the contract.

POST /feedback's label schema is the contract's label column. Served at GET /openapi.json so API tooling (and schemathesis-style fuzzers) know the routes and the
columns a model accepts.
"""

from __future__ import annotations

from typing import Any

from loopline.data.contracts import Contract

_JSON_TYPES = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "string": "string",
    "category": "string",
}


def column_schema(spec) -> dict[str, Any]:
    if spec.type == "timestamp":
        schema: dict[str, Any] = {"type": "string", "format": "date-time"}
    else:
        schema = {"type": _JSON_TYPES[spec.type]}
    if spec.min is not None:
        schema["minimum"] = spec.min
    if spec.max is not None:
        schema["maximum"] = spec.max
    if spec.values is not None:
        schema["enum"] = list(spec.values)
    if spec.max_length is not None:
        schema["maxLength"] = spec.max_length
    if spec.regex is not None:
        schema["pattern"] = spec.regex
    if spec.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _format(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A body in one MLflow input format: that key (plus an optional `params`), nothing else."""
    return {
        "type": "object",
        "required": [name],
        "properties": {name: schema, "params": {"type": "object"}},
        "additionalProperties": False,
    }


def feedback_body(contract: Contract | None) -> dict[str, Any]:
    """POST /feedback: one request's labels (one per row), or items naming request id and row each."""
    label: dict[str, Any] = {}  # no model loaded: any JSON value (the server answers 503 anyway)
    if contract is not None:
        label = column_schema(contract.columns[contract.label])
        if "anyOf" in label:  # a label is never null, whatever the column allows in the data
            label = label["anyOf"][0]
    request_id = {"type": "string", "minLength": 1, "maxLength": 200}
    item = {
        "type": "object",
        "required": ["request_id", "row", "label"],
        "properties": {"request_id": request_id, "row": {"type": "integer", "minimum": 0}, "label": label},
        "additionalProperties": False,
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "required": ["request_id", "labels"],
                "properties": {"request_id": request_id, "labels": {"type": "array", "items": label}},
                "additionalProperties": False,
            },
            {
                "type": "object",
                "required": ["items"],
                "properties": {"items": {"type": "array", "items": item}},
                "additionalProperties": False,
            },
        ]
    }


def openapi_document(contract: Contract | None, max_body_bytes: int) -> dict[str, Any]:
    row: dict[str, Any] = {"type": "object"}
    if contract is not None:
        kept = [c for c in contract.column_names]
        row = {
            "type": "object",
            "properties": {c: column_schema(contract.columns[c]) for c in kept},
            "required": [c for c in contract.feature_columns if not contract.columns[c].nullable],
            "additionalProperties": False,
        }
    split = {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "data": {"type": "array", "items": {"type": "array"}},  # one value per column, in order
            "index": {"type": "array"},  # what pandas' to_json(orient="split") adds; ignored
        },
    }
    rows = {"type": "array", "items": row}
    body = {
        "oneOf": [
            _format("dataframe_split", split),
            _format("dataframe_records", rows),
            _format("instances", {"oneOf": [rows, row]}),  # a single object is one instance
            # rows, or columns: {"col": [values...]} (an object of scalars is one row)
            _format("inputs", {"oneOf": [rows, {"type": "object"}]}),
        ]
    }
    error = {
        "type": "object",
        "required": ["error_code", "message"],
        "properties": {
            "error_code": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "array", "items": {"type": "object"}},
        },
    }

    def err(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

    unavailable = {
        **err("no model loaded yet, or a backpressure bound reached: retry after `Retry-After` seconds"),
        "headers": {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
    json_object = {"type": "object"}

    def ok(description: str, schema: dict[str, Any] = json_object) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    health = {
        "type": "object",
        "required": ["status", "model"],
        "properties": {
            "status": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "last_error": {"type": "string"},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "loopline serving",
            "version": "1",
            "description": f"MLflow scoring protocol; bodies up to {max_body_bytes} bytes",
        },
        "paths": {
            "/invocations": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                    "parameters": [
                        {
                            "name": "X-Request-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "X-Request-Id",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": ok(
                            "one prediction per row",
                            {
                                "type": "object",
                                "required": ["predictions"],
                                "properties": {"predictions": {"type": "array"}},
                            },
                        ),
                        "400": err("not JSON, or no MLflow input format"),
                        "413": err("body too large"),
                        "415": err("not JSON"),
                        "422": err("input breaks the contract; `fields` names each field"),
                        "500": err("the model itself failed on the rows"),
                        "503": unavailable,
                    },
                }
            },
            "/feedback": {
                "post": {
                    "description": "labels for served rows, keyed by the X-Request-Id a scoring answer carried "
                    "and the row's place in that request; posting the same label twice lands once",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": feedback_body(contract)}},
                    },
                    "responses": {
                        "200": ok(
                            "the labels are committed to feedback/M",
                            {
                                "type": "object",
                                "required": ["accepted"],
                                "properties": {"accepted": {"type": "integer", "minimum": 0}},
                            },
                        ),
                        "400": err("not JSON, or a body in neither form"),
                        "403": err("feedback is disabled on this server"),
                        "413": err("body too large"),
                        "415": err("not JSON"),
                        "422": err("a request id, row or label breaks its rules; `fields` names each"),
                        "503": unavailable,
                    },
                }
            },
            "/ping": {
                "get": {
                    "responses": {
                        "200": {"description": "a model is loaded"},
                        "503": {"description": "no model loaded yet"},
                    }
                }
            },
            "/health": {
                "get": {
                    "responses": {
                        "200": ok("status and version", health),
                        "503": ok("no model loaded yet", health),
                    }
                }
            },
            "/version": {"get": {"responses": {"200": ok("model, version, alias, loaded_at, challenger")}}},
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    }
                }
            },
            "/reload": {
                "post": {
                    "description": "check the registry now and swap if an alias moved",
                    "parameters": [
                        {
                            "name": "X-Reload-Token",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": ok("/version after the swap, plus `changed` and `error`"),
                        "401": err("missing or wrong reload token"),
                        "403": err("reload is disabled on this server"),
                        "502": ok("the registry or the new version failed; the old one keeps serving"),
                    },
                }
            },
            "/openapi.json": {"get": {"responses": {"200": ok("this document")}}},
        },
    }
