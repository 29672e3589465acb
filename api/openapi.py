"""The service's OpenAPI schema, stating every rule the server checks on a request body.

FastAPI derives the request schemas from :mod:`hugie.types`; this adds what depends on the running
service (its length and count limits) and the rules that span fields (one mode per request, options
that belong to a mode, flat NER with every type kept, the subject-threshold floor), so that a request
the schema accepts is one the server accepts — up to the cost limits that depend on what the model
finds (subjects, spans, work), which answer 413.
"""

from __future__ import annotations

from .settings import Settings

_ENTITY_ONLY = ("one_type_per_span", "flat_ner", "language")


def _required(*names: str) -> dict:
    return {"required": list(names)}


def _given(name: str) -> dict:
    """``name`` is present and not null (the server reads a null option as not given)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def tighten(spec: dict, settings: Settings) -> dict:
    """``spec`` with the request rules of ``settings`` written in; returns it."""
    schemas = spec.get("components", {}).get("schemas", {})
    name_limit = {"maxLength": settings.max_instruction_chars}
    request = schemas.get("ExtractRequest")
    if request is not None:
        props = request["properties"]
        props["text"]["maxLength"] = settings.max_text_chars
        _set(props["instruction"], name_limit)
        _set(props["entities"], {"maxItems": settings.max_entity_types, "items": {
            "type": "string", **name_limit, "minLength": 1, "pattern": r"\S"}})
        floor = settings.min_subject_threshold
        request["oneOf"] = [  # the mode given, no other mode, and only the options of that mode
            {**_given("instruction"), "not": {"anyOf": [_given(o) for o in (
                "entities", "schema", *_ENTITY_ONLY, "relation_threshold")]}},
            {**_given("entities"), "not": {"anyOf": [_given(o) for o in ("instruction", "schema",
                                                                         "relation_threshold")]}},
            {**_given("schema"), "not": {"anyOf": [_given(o) for o in ("instruction", "entities")]}},
        ]
        request["not"] = {"anyOf": [
            {**_required("flat_ner", "one_type_per_span"),
             "properties": {"flat_ner": {"const": True}, "one_type_per_span": {"const": False}}},
            {**_required("schema", "threshold"), "properties": {
                "threshold": {"type": "number", "exclusiveMaximum": floor},
                "schema": {**_required("relations"), "properties": {"relations": {"minItems": 1}}}}},
        ]}
    schema = schemas.get("Schema")
    if schema is not None:
        props = schema["properties"]
        props["entities"].update(maxItems=settings.max_entity_types,
                                 items={**props["entities"].get("items", {}), **name_limit, "minLength": 1,
                                        "pattern": r"\S"})
        props["relations"]["maxItems"] = settings.max_relations
        schema["anyOf"] = [{**_required("entities"), "properties": {"entities": {"minItems": 1}}},
                           {**_required("relations"), "properties": {"relations": {"minItems": 1}}}]
    relation = schemas.get("RelationSchema")
    if relation is not None:
        for key in ("subject", "predicate", "object"):
            _set(relation["properties"][key], name_limit)
    batch = schemas.get("BatchRequest")
    if batch is not None:
        batch["properties"]["items"]["maxItems"] = settings.max_batch_items
    return spec


def _set(prop: dict, values: dict) -> None:
    """Apply string or array ``values`` to a property, inside its non-null ``anyOf`` branch if it has one."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") in ("string", "array"):
            branch.update(values)
