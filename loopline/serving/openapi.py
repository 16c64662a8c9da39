"""An OpenAPI 3 description of the scoring API, with the row schema taken from the contract.

Served at GET /openapi.json so API tooling (and schemathesis-style fuzzers) know the routes and the
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
    body = {
        "oneOf": [
            {
                "type": "object",
                "required": ["dataframe_split"],
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "required": ["columns", "data"],
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array", "items": {"type": "array"}},
                        },
                    }
                },
            },
            {
                "type": "object",
                "required": ["dataframe_records"],
                "properties": {"dataframe_records": {"type": "array", "items": row}},
            },
            {
                "type": "object",
                "required": ["instances"],
                "properties": {"instances": {"type": "array", "items": row}},
            },
            {
                "type": "object",
                "required": ["inputs"],
                "properties": {"inputs": {"type": "array", "items": row}},
            },
        ]
    }
    error = {
        "type": "object",
        "properties": {
            "error_code": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "array"},
        },
    }

    def err(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": error}}}

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
                        "200": {
                            "description": "one prediction per row",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"predictions": {"type": "array"}},
                                    }
                                }
                            },
                        },
                        "400": err("not JSON, or no MLflow input format"),
                        "413": err("body too large"),
                        "415": err("not JSON"),
                        "422": err("input breaks the contract; `fields` names each field"),
                    },
                }
            },
            "/ping": {"get": {"responses": {"200": {"description": "a model is loaded"}}}},
            "/health": {"get": {"responses": {"200": {"description": "status and version"}}}},
            "/version": {"get": {"responses": {"200": {"description": "model, version, alias, loaded_at"}}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
        },
    }
