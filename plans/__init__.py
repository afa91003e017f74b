"""Pure planning: desired specs + a state snapshot -> a Plan; rendering; plan files.

No I/O here beyond reading and writing a plan file.
"""

from ._canonical import SENSITIVE, Canonical, Digest, canonical_endpoint, is_sensitive
from ._capacity import ClusterCapacity, NodeCapacity, capacity_errors
from ._diff import FieldDiff, diff_documents, render_path
from ._model import (
    Action,
    ChangeClass,
    EndpointChange,
    FieldChange,
    Plan,
    PlanError,
    PlanSummary,
)
from ._planfile import FORMAT_VERSION, PlanFile, PlanFileError, read_plan_file, write_plan_file
from ._planner import (
    SecretAccess,
    has_external,
    has_self_hosted,
    make_plan,
    secret_references,
    secret_use_errors,
)
from ._render import render_plan_json, render_plan_text
from ._state import EndpointRecord, StateSnapshot, record_fingerprint

__all__ = [
    "FORMAT_VERSION",
    "SecretAccess",
    "secret_use_errors",
    "PlanFile",
    "PlanFileError",
    "read_plan_file",
    "render_plan_json",
    "render_plan_text",
    "write_plan_file",
    "Action",
    "Canonical",
    "ClusterCapacity",
    "NodeCapacity",
    "capacity_errors",
    "ChangeClass",
    "Digest",
    "EndpointChange",
    "EndpointRecord",
    "FieldChange",
    "FieldDiff",
    "Plan",
    "PlanError",
    "PlanSummary",
    "SENSITIVE",
    "StateSnapshot",
    "canonical_endpoint",
    "diff_documents",
    "has_external",
    "has_self_hosted",
    "is_sensitive",
    "make_plan",
    "record_fingerprint",
    "render_path",
    "secret_references",
]
